//! `sortition policy explain MODEL`: a model's security policy, the minimum collateral the
//! ledger derived from it, and what the policy means for a cheater.
//!
//! Money comes from the ledger as integers; floats appear only in the probabilities printed.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use sortition_ledger::SecurityPolicy;
use sortition_ledger::policy::PPM;
use sortition_ledger_client::LedgerClient;
use sortition_ledger_client::records::ModelEntry;
use sortition_types::ModelId;

use super::common::base_url;

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Print a model's audit policy (q, k, quorum, slash fraction, C, R, r), the minimum
    /// collateral S_min = C / ((1 - r^k) q) - R that the ledger enforces, the probability that
    /// one cheat is caught for several colluding shares, and how often a quorum settles wrong.
    Explain(ExplainArgs),
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The model id as registered on the ledger (see `sortition status`).
    model: String,
    /// Ledger URL.
    #[arg(
        long,
        env = "SORTITION_LEDGER",
        default_value = "http://127.0.0.1:7400"
    )]
    ledger: String,
}

pub async fn run(cmd: PolicyCmd) -> Result<()> {
    let PolicyCmd::Explain(a) = cmd;
    let ledger = base_url("ledger", &a.ledger)?;
    let entry = LedgerClient::new(&ledger)
        .model(&ModelId::new(a.model.clone()))
        .await
        .with_context(|| format!("reading model {:?} from {ledger}", a.model))?;
    print!("{}", explain(&entry));
    Ok(())
}

/// `x` in parts per million as a probability.
fn prob(ppm: u64) -> f64 {
    ppm as f64 / PPM as f64
}

/// Detection probability of one cheat when a share `f` of the auditors colludes.
pub fn detection(q: f64, k: u8, f: f64) -> f64 {
    q * (1.0 - f.powi(i32::from(k)))
}

/// A colluding share, marked when it is the policy's own `r`.
fn label(f: f64, r: f64) -> String {
    if (f - r).abs() < 1e-12 {
        format!("{f} (= r)")
    } else {
        f.to_string()
    }
}

/// The explanation, as printed.
pub fn explain(entry: &ModelEntry) -> String {
    let p: &SecurityPolicy = &entry.spec.policy;
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let r = prob(u64::from(p.colluding_share_ppm));
    line(format!("model {}", entry.spec.id));
    match p.audit {
        Some(a) => {
            line(format!(
                "  audit probability   q = {} ({} ppm)",
                prob(u64::from(a.q_ppm)),
                a.q_ppm
            ));
            line(format!("  auditors per audit  k = {}", a.k));
        }
        None => line("  audits              off (no asynchronous cross-validation)".into()),
    }
    match p.quorum {
        Some(n) => line(format!("  sync quorum         n = {n}")),
        None => line("  sync quorum         none".into()),
    }
    line(format!(
        "  slash fraction      {}% ({} bps)",
        f64::from(p.slash_bps) / 100.0,
        p.slash_bps
    ));
    line(format!(
        "  confidential        {}",
        if p.confidential_required {
            "required"
        } else {
            "optional"
        }
    ));
    line(format!(
        "  C cost per request  {} ({} micro)",
        p.cost_per_request, p.cost_per_request.0
    ));
    line(format!(
        "  R audit reward      {} ({} micro)",
        p.audit_reward, p.audit_reward.0
    ));
    line(format!(
        "  r colluding share   {r} ({} ppm)",
        p.colluding_share_ppm
    ));
    line(format!(
        "  S_min = C/((1-r^k) q) - R = {} ({} micro), as computed by the ledger",
        entry.min_collateral, entry.min_collateral.0
    ));
    match sortition_ledger::min_collateral(p) {
        Ok(local) if local == entry.min_collateral => {}
        Ok(local) => line(format!(
            "  WARNING: this binary computes S_min = {local}; the ledger's rules differ"
        )),
        Err(e) => line(format!("  WARNING: this binary rejects the policy: {e}")),
    }

    let mut shares = vec![0.1, 0.25, 0.5];
    if !shares.iter().any(|s| (s - r).abs() < 1e-12) {
        shares.push(r);
    }
    if let Some(a) = p.audit {
        let q = prob(u64::from(a.q_ppm));
        line(String::new());
        line("  colluding f   caught per cheat d = q(1-f^k)   undetected cheats before a catch (1-d)/d".into());
        for f in &shares {
            let d = detection(q, a.k, *f);
            let before = if d > 0.0 {
                format!("{:.2}", (1.0 - d) / d)
            } else {
                "never caught".into()
            };
            line(format!("  {:<12}  {d:<32.6}  {before}", label(*f, r)));
        }
    }
    if let Some(n) = p.quorum {
        line(String::new());
        line(format!("  colluding f   quorum of {n} settles wrong f^n"));
        for f in &shares {
            line(format!(
                "  {:<12}  {:.6}",
                label(*f, r),
                f.powi(i32::from(n))
            ));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sortition_ledger::{AuditPolicy, ModelSpec};
    use sortition_types::{Amount, Hash32};

    fn entry(audit: Option<AuditPolicy>, quorum: Option<u8>) -> ModelEntry {
        let policy = SecurityPolicy {
            audit,
            quorum,
            confidential_required: false,
            slash_bps: 5_000,
            cost_per_request: Amount(1_000),
            audit_reward: Amount(1_200),
            colluding_share_ppm: 500_000,
        };
        let min_collateral = sortition_ledger::min_collateral(&policy).unwrap_or_default();
        let spec = ModelSpec {
            id: ModelId::new("m"),
            weights_digest: Hash32([0; 32]),
            tokenizer_digest: Hash32([0; 32]),
            policy,
        };
        ModelEntry {
            spec,
            min_collateral,
        }
    }

    #[test]
    fn detection_matches_the_formula() {
        assert!((detection(0.1, 2, 0.5) - 0.075).abs() < 1e-12);
        assert!((detection(1.0, 1, 0.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn explanation_shows_the_ledger_minimum_and_odds() {
        let e = entry(
            Some(AuditPolicy {
                q_ppm: 100_000,
                k: 2,
                method: Default::default(),
            }),
            Some(3),
        );
        let s = explain(&e);
        assert!(s.contains(&format!("{} micro", e.min_collateral.0)), "{s}");
        assert!(s.contains("0.075000"), "{s}");
        assert!(s.contains("0.125000"), "{s}"); // 0.5^3
    }

    #[test]
    fn no_audit_says_so() {
        let s = explain(&entry(None, None));
        assert!(s.contains("audits              off"), "{s}");
        assert!(!s.contains("caught per cheat"), "{s}");
    }
}
