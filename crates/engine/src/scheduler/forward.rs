//! What the scheduler needs of a model: one forward call over several sequences' new tokens.
//! [`Llama`] is the model the engine runs; the scheduler's tests run a fake one, so batching,
//! chunked prefill and admission are tested without a model file.

use sortition_kernels::Pool;

use crate::error::Result;
use crate::llama::{KvCache, Llama, Segment};

/// One sequence's part of a forward call: the tokens appended to its cache, and from which of
/// them on logits rows are wanted (`tokens.len() - 1`: the last one, to sample from;
/// `tokens.len()`: none, for a prompt chunk with more to come).
pub struct Rows<'a, C> {
    pub cache: &'a mut C,
    pub tokens: &'a [u32],
    pub logits_from: usize,
}

/// A model the scheduler can batch.
pub trait Forward: Send + 'static {
    /// One sequence's attention cache.
    type Cache: Send;
    fn new_cache(&self) -> Self::Cache;
    /// Positions a cache holds.
    fn cached(&self, cache: &Self::Cache) -> usize;
    /// Appends each sequence's tokens to its cache and returns, per sequence, its logits rows
    /// from `logits_from` on (`vocab` wide each). A row depends only on its sequence's tokens
    /// up to its position: not on the other sequences of the call, nor on how that sequence's
    /// tokens were split over calls.
    fn forward_rows(&self, batch: &mut [Rows<'_, Self::Cache>]) -> Result<Vec<Vec<f32>>>;
    fn vocab(&self) -> usize;
    fn context_len(&self) -> usize;
    /// Bytes of attention cache one position takes (for admission by memory).
    fn kv_bytes_per_position(&self) -> usize;
    /// The threads that sample the rows of a step in parallel.
    fn pool(&self) -> &Pool;
}

impl Forward for Llama {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        Llama::new_cache(self)
    }

    fn cached(&self, cache: &KvCache) -> usize {
        cache.len()
    }

    fn forward_rows(&self, batch: &mut [Rows<'_, KvCache>]) -> Result<Vec<Vec<f32>>> {
        let from: Vec<usize> = batch
            .iter()
            .map(|r| r.logits_from.min(r.tokens.len()))
            .collect();
        let mut segs: Vec<Segment<'_>> = batch
            .iter_mut()
            .map(|r| Segment {
                cache: &mut *r.cache,
                tokens: r.tokens,
                all_logits: false,
            })
            .collect();
        self.forward_from_each(&mut segs, &from)
    }

    fn vocab(&self) -> usize {
        self.cfg.vocab
    }

    fn context_len(&self) -> usize {
        self.cfg.context_len
    }

    fn kv_bytes_per_position(&self) -> usize {
        // A key and a value of `head_dim` half-precision numbers per layer and key/value head.
        self.cfg.layers * self.cfg.kv_heads * self.cfg.head_dim * 2 * 2
    }

    fn pool(&self) -> &Pool {
        Llama::pool(self)
    }
}
