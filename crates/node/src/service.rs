//! The node's shared state and the work common to every OpenAI route: authenticate, reserve
//! units, run, settle, sign and persist the receipt.

use std::collections::HashMap;
use std::sync::Arc;

use sortition_api::{metrics::Registry, unix_now_ms};
use sortition_engine::{Embedder, Engine};
use sortition_types::{
    Custody, Hash32, Keypair, ModelId, NodeClass, NodeId, Receipt, SamplingRecord, SignedReceipt,
};

use crate::accounts::{Reservation, StackAccounts, StackInfo};
use crate::auth::StackSource;
use crate::error::NodeError;
use crate::store::{Appended, NodeStore, StoreError};

/// A chat/text model served by this node.
pub struct ChatModel {
    pub engine: Engine,
}

/// An embedding model served by this node.
pub struct EmbedModel {
    pub embedder: Arc<Embedder>,
    pub id: ModelId,
    pub digest: Hash32,
}

/// Everything the handlers share.
pub struct NodeState {
    /// This node's id on the ledger; receipts carry it.
    pub id: NodeId,
    /// The node's signing key; the ledger holds its public half.
    pub key: Keypair,
    pub chat: HashMap<ModelId, ChatModel>,
    pub embed: HashMap<ModelId, EmbedModel>,
    /// Class fingerprint recorded in every receipt.
    pub class: NodeClass,
    pub store: NodeStore,
    pub accounts: StackAccounts,
    pub stacks: Arc<dyn StackSource>,
    pub metrics: Registry,
    /// How this node conducts itself where it could cheat ([`crate::behaviour::Honest`] but
    /// on a devnet that runs an adversary).
    pub behaviour: Arc<dyn crate::behaviour::Behaviour>,
    /// Audits and disputes this node must judge.
    pub audits: crate::desk::AuditDesk,
    /// Confidential keys and their attester; `None` when the node runs without an attester
    /// (it then serves no confidential requests).
    pub confidential: Option<Arc<crate::keyring::KeyRing>>,
    /// The ledger's height, to wait on (duties re-read the ledger once per block).
    pub head: sortition_ledger_client::ChainHead,
}

/// What a finished request reports for its receipt.
pub struct Outcome {
    pub model: ModelId,
    pub model_digest: Hash32,
    pub request_hash: Hash32,
    pub response_hash: Hash32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub sampling: SamplingRecord,
    /// Who keeps the request for audits: the gateway for plain requests, this node for
    /// confidential ones (nobody else can read them).
    pub custody: Custody,
}

impl NodeState {
    /// Copies the engines' scheduler figures (summed over models) into the metrics gauges.
    pub fn refresh_engine_gauges(&self) {
        let mut sum = sortition_engine::EngineStats::default();
        for m in self.chat.values() {
            let st = m.engine.stats();
            sum.completed += st.completed;
            sum.cancelled += st.cancelled;
            sum.max_batch_seen = sum.max_batch_seen.max(st.max_batch_seen);
            sum.queued += st.queued;
            sum.active += st.active;
            sum.decode_steps += st.decode_steps;
            sum.decode_rows += st.decode_rows;
        }
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.metrics
            .set_gauge("engine_sequences_completed", g(sum.completed));
        self.metrics
            .set_gauge("engine_sequences_cancelled", g(sum.cancelled));
        self.metrics
            .set_gauge("engine_max_batch_size", g(sum.max_batch_seen));
        // Queue depth and batch size right now; steps and rows (cumulative) give the mean
        // batch size over any window: Δrows / Δsteps.
        self.metrics.set_gauge("engine_queue_depth", g(sum.queued));
        self.metrics.set_gauge("engine_batch_size", g(sum.active));
        self.metrics.set_gauge("engine_steps", g(sum.decode_steps));
        self.metrics
            .set_gauge("engine_step_rows", g(sum.decode_rows));
    }

    pub fn engine(&self, model: &str) -> Result<&ChatModel, NodeError> {
        self.chat
            .get(&ModelId::new(model))
            .ok_or_else(|| self.unknown_model(model))
    }

    pub fn embedder(&self, model: &str) -> Result<&EmbedModel, NodeError> {
        self.embed
            .get(&ModelId::new(model))
            .ok_or_else(|| self.unknown_model(model))
    }

    fn unknown_model(&self, model: &str) -> NodeError {
        NodeError::UnknownModel {
            model: model.to_string(),
            known: self.model_names(),
        }
    }

    pub fn model_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .chat
            .keys()
            .chain(self.embed.keys())
            .map(|m| m.0.clone())
            .collect();
        v.sort();
        v
    }

    /// Reserves units on an authenticated stack.
    pub fn reserve(
        &self,
        stack: &StackInfo,
        model: &ModelId,
        needed: u64,
    ) -> Result<Reservation, NodeError> {
        Ok(self
            .accounts
            .reserve(stack, self.id, model, needed, unix_now_ms())?)
    }

    /// Signs the receipt and persists it, then charges the reservation, before returning it.
    /// The receipt's sequence number is allocated in the write that persists it (see
    /// [`crate::store::NodeStore::append_receipt`]): a failed write leaves no gap. A receipt
    /// that cannot be persisted is not delivered: the caller gets a 503 with `Retry-After`
    /// (not the answer) and the reservation goes back to the stack uncharged.
    pub fn finish(&self, r: Reservation, out: Outcome) -> Result<SignedReceipt, NodeError> {
        self.finish_with(r, out, |_| None)
    }

    /// [`NodeState::finish`], also keeping what `custody` makes of the delivered receipt (a
    /// sealed confidential request) in the same write as the receipt.
    pub fn finish_with(
        &self,
        r: Reservation,
        out: Outcome,
        custody: impl FnOnce(&SignedReceipt) -> Option<Vec<u8>>,
    ) -> Result<SignedReceipt, NodeError> {
        let stack = r.stack;
        let used = out.input_tokens + out.output_tokens;
        let (input_tokens, output_tokens) =
            self.behaviour.usage(out.input_tokens, out.output_tokens);
        let (input, output) = (out.input_tokens, out.output_tokens);
        let persisted = self.store.append_receipt(stack, |sequence| {
            let receipt = Receipt {
                node: self.id,
                stack,
                sequence,
                model: out.model,
                model_digest: out.model_digest,
                node_class: self.class.fingerprint(),
                request_hash: out.request_hash,
                response_hash: out.response_hash,
                input_tokens,
                output_tokens,
                sampling: out.sampling,
                timestamp_ms: unix_now_ms(),
                custody: out.custody,
            };
            let kept = self.behaviour.kept_receipt(&receipt);
            let signed = SignedReceipt::sign(receipt, &self.key);
            let kept = kept.map_or_else(|| signed.clone(), |r| SignedReceipt::sign(r, &self.key));
            Ok::<_, StoreError>(Appended {
                kept,
                custody: custody(&signed),
                out: signed,
            })
        });
        let signed = match persisted {
            Ok(signed) => signed,
            Err(e) => {
                self.release(r);
                self.metrics.inc("receipt_persist_failures_total", "", 1);
                tracing::error!(%stack, error = %e, "receipt not persisted; the answer is withheld");
                return Err(NodeError::ReceiptNotPersisted(e));
            }
        };
        self.accounts.charge(r, used);
        self.metrics.inc("tokens_total", "input", input);
        self.metrics.inc("tokens_total", "output", output);
        Ok(signed)
    }

    /// Returns a reservation unused (the request failed before any work was done).
    pub fn release(&self, r: Reservation) {
        self.accounts.settle(r, 0, false);
    }

    /// Reserves the worst case (prompt plus `max_tokens`) on the stack and starts the
    /// generation; the reservation is returned if the engine refuses the request.
    pub fn start_generation(
        &self,
        stack: &StackInfo,
        chat: &ChatModel,
        model: &ModelId,
        prompt_tokens: Vec<u32>,
        options: GenerationOptions,
    ) -> Result<(Reservation, sortition_engine::GenerationStream), NodeError> {
        let GenerationOptions {
            params,
            logprobs,
            constraint,
        } = options;
        let needed = prompt_tokens.len() as u64 + u64::from(params.max_tokens);
        let reservation = self.reserve(stack, model, needed)?;
        let prompt = self
            .behaviour
            .prompt(sortition_engine::Prompt::Tokens(prompt_tokens));
        match chat.engine.generate(sortition_engine::GenerateRequest {
            logprobs,
            constraint,
            ..sortition_engine::GenerateRequest::new(prompt, params)
        }) {
            Ok(stream) => Ok((reservation, stream)),
            Err(e) => {
                self.release(reservation);
                Err(e.into())
            }
        }
    }
}

/// How a generation runs, besides its prompt.
pub struct GenerationOptions {
    pub params: sortition_engine::SamplingParams,
    /// Alternatives per token when log-probabilities are asked for.
    pub logprobs: Option<u8>,
    /// The constraint on the text (structured outputs).
    pub constraint: Option<sortition_engine::Constraint>,
}
