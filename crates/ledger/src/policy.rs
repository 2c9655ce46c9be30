//! Models, their security policy, and the minimum collateral the policy implies.
//!
//! Honest play is an equilibrium when the stake `S` satisfies `q >= C / ((1 - r^k)(R + S))`,
//! i.e. `S_min = C / ((1 - r^k) q) - R` (see FACTS.md). Computed here in integers only.

use serde::{Deserialize, Serialize};
use sortition_types::{Amount, Hash32, ModelId};

use crate::error::LedgerError;

/// Parts per million: `1_000_000` is probability 1.
pub const PPM: u64 = 1_000_000;
/// Basis points: `10_000` is 100 %.
pub const BPS: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub id: ModelId,
    pub weights_digest: Hash32,
    pub tokenizer_digest: Hash32,
    pub policy: SecurityPolicy,
}

/// The default asks nothing: no audits, no quorum, no slashing (a model served on trust).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityPolicy {
    /// Asynchronous cross-validation; `None` disables audits (and the collateral minimum).
    pub audit: Option<AuditPolicy>,
    /// Synchronous quorum size the gateway must use, if any (enforced off-ledger).
    pub quorum: Option<u8>,
    pub confidential_required: bool,
    /// Fraction of the executor's collateral slashed when it loses a dispute.
    pub slash_bps: u16,
    /// `C`: what re-executing one request costs an auditor.
    pub cost_per_request: Amount,
    /// `R`: what an auditor earns for an honest audit.
    pub audit_reward: Amount,
    /// `r`: assumed share of colluding auditors.
    pub colluding_share_ppm: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPolicy {
    /// `q`: probability each receipt is audited, in parts per million.
    pub q_ppm: u32,
    /// Auditors per sampled receipt.
    pub k: u8,
    /// How auditors check a sampled request.
    #[serde(default)]
    pub method: AuditMethod,
}

/// How an auditor checks a sampled request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditMethod {
    /// Regenerate the answer and compare response hashes and token counts exactly.
    #[default]
    Reexecute,
    /// Teacher-forced scoring of the claimed answer in one prefill pass. Greedy requests:
    /// every claimed token is the argmax, or within `logit_slack_milli` thousandths of the top
    /// logit (kernel rounding between prefill and decode). Sampled requests: with
    /// `draw_slack_ppm`, every token is the one the request's seeded draw picks from the
    /// auditor's row, or the draw's uniform falls within that many millionths of probability
    /// of the token's interval; without it (policies written before the draw check), within
    /// `max_rank` of the argmax. A failed or inconclusive score is confirmed by re-execution
    /// before any mismatch verdict, so scoring never convicts on its own.
    Score {
        max_rank: u32,
        logit_slack_milli: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        draw_slack_ppm: Option<u32>,
    },
}

/// Fixed-point scale for `1 - r^k`.
const SCALE: u128 = 1_000_000_000_000_000_000; // 1e18

/// `S_min = ceil(C / ((1 - r^k) q)) - R`, clamped at 0.
///
/// Exact rational arithmetic for `k <= 3` (r^k in ppm^k fits the 1e18 scale exactly); for larger
/// `k`, `r^k` is rounded *up* at each step, which only raises the minimum (conservative).
pub fn min_collateral(policy: &SecurityPolicy) -> Result<Amount, LedgerError> {
    validate(policy)?;
    let Some(audit) = policy.audit else {
        return Ok(Amount::ZERO);
    };
    let r = u128::from(policy.colluding_share_ppm);
    let ppm = u128::from(PPM);
    // r^k at scale 1e18, rounded up.
    let mut rk = SCALE;
    for _ in 0..audit.k {
        rk = (rk * r).div_ceil(ppm);
    }
    let one_minus = SCALE - rk; // > 0 because r < 1 and rounding stays below SCALE
    if one_minus == 0 {
        return Err(LedgerError::InvalidPolicy("1 - r^k rounds to zero".into()));
    }
    // S + R = C * 1e18 * 1e6 / (one_minus * q_ppm)
    let num = u128::from(policy.cost_per_request.0)
        .checked_mul(SCALE)
        .and_then(|x| x.checked_mul(ppm))
        .ok_or_else(|| LedgerError::InvalidPolicy("cost per request too large".into()))?;
    let den = one_minus * u128::from(audit.q_ppm);
    let s_plus_r = num.div_ceil(den);
    let s = s_plus_r.saturating_sub(u128::from(policy.audit_reward.0));
    u64::try_from(s)
        .map(Amount)
        .map_err(|_| LedgerError::InvalidPolicy("minimum collateral exceeds u64".into()))
}

/// Range checks on a policy.
pub fn validate(policy: &SecurityPolicy) -> Result<(), LedgerError> {
    let bad = |m: &str| Err(LedgerError::InvalidPolicy(m.into()));
    if u64::from(policy.slash_bps) > BPS {
        return bad("slash_bps above 10000");
    }
    if u64::from(policy.colluding_share_ppm) >= PPM {
        return bad("colluding share must be below 1");
    }
    if let Some(a) = policy.audit {
        if a.q_ppm == 0 || u64::from(a.q_ppm) > PPM {
            return bad("q_ppm must be in 1..=1000000");
        }
        if a.k == 0 {
            return bad("k must be at least 1");
        }
        if let AuditMethod::Score {
            draw_slack_ppm: Some(ppm),
            ..
        } = a.method
            && u64::from(ppm) > PPM
        {
            return bad("draw_slack_ppm must be at most 1000000");
        }
    }
    if policy.quorum == Some(0) {
        return bad("quorum must be at least 1");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(q_ppm: u32, k: u8, c: u64, r_reward: u64, r_ppm: u32) -> SecurityPolicy {
        SecurityPolicy {
            audit: Some(AuditPolicy {
                q_ppm,
                k,
                method: AuditMethod::Reexecute,
            }),
            quorum: None,
            confidential_required: false,
            slash_bps: 10_000,
            cost_per_request: Amount(c),
            audit_reward: Amount(r_reward),
            colluding_share_ppm: r_ppm,
        }
    }

    /// Atoma's paper: S = 250 C, R = 1.2 C, r = 0.5 gives q ≈ 0.8 % (k = 1). Inverting with
    /// q = 0.7962 % must give S ≈ 250 C.
    #[test]
    fn atoma_numbers_give_250_c() {
        let c = 1_000_000; // C = 1 unit
        let p = policy(7_962, 1, c, 1_200_000, 500_000);
        // 1e6 / (0.5 * 0.007962) = 251_193_167.54… → ceil 251_193_168, minus R.
        assert_eq!(
            min_collateral(&p).expect("valid policy"),
            Amount(249_993_168)
        );
        let ratio = min_collateral(&p).expect("valid policy").0 as f64 / c as f64;
        assert!((ratio - 250.0).abs() < 0.01, "{ratio}");
    }

    #[test]
    fn more_auditors_need_less_stake_and_k2_is_exact() {
        // k = 2: 1 - 0.25 = 0.75 → 1e6 / (0.75 * 0.01) = 133_333_333.3 → 133_333_334 - R.
        let p = policy(10_000, 2, 1_000_000, 1_000_000, 500_000);
        assert_eq!(
            min_collateral(&p).expect("valid policy"),
            Amount(132_333_334)
        );
        let k1 = min_collateral(&policy(10_000, 1, 1_000_000, 1_000_000, 500_000))
            .expect("valid policy");
        assert!(k1 > min_collateral(&p).expect("valid policy"));
        let k9 = min_collateral(&policy(10_000, 9, 1_000_000, 1_000_000, 500_000))
            .expect("valid policy");
        assert!(k9 < min_collateral(&p).expect("valid policy") && k9.0 >= 99_000_000);
    }

    /// The draw check's slack is a share of probability (at most 1), and a policy written
    /// before it existed reads as scoring sampled answers by rank (and is written back the
    /// same way).
    #[test]
    fn score_policies_bound_the_draw_slack_and_read_without_it() {
        let mut p = policy(10_000, 2, 1_000, 100, 100_000);
        let score = |draw_slack_ppm| AuditMethod::Score {
            max_rank: 1_000,
            logit_slack_milli: 250,
            draw_slack_ppm,
        };
        for (ppm, ok) in [
            (Some(0), true),
            (Some(1_000_000), true),
            (Some(1_000_001), false),
        ] {
            p.audit = p.audit.map(|a| AuditPolicy {
                method: score(ppm),
                ..a
            });
            assert_eq!(validate(&p).is_ok(), ok, "{ppm:?}");
        }
        let old = r#"{"score":{"max_rank":1000,"logit_slack_milli":250}}"#;
        let read: AuditMethod = serde_json::from_str(old).unwrap();
        assert_eq!(read, score(None));
        assert_eq!(serde_json::to_string(&read).unwrap(), old);
    }

    #[test]
    fn clamps_at_zero_and_rejects_bad_policies() {
        assert_eq!(
            min_collateral(&policy(1_000_000, 1, 1, 1_000_000, 0)).expect("valid policy"),
            Amount::ZERO
        );
        assert!(min_collateral(&policy(0, 1, 1, 1, 0)).is_err());
        assert!(min_collateral(&policy(10, 0, 1, 1, 0)).is_err());
        assert!(min_collateral(&policy(10, 1, 1, 1, 1_000_000)).is_err());
        assert!(min_collateral(&policy(1, 1, u64::MAX, 0, 999_999)).is_err());
        let mut none = policy(10, 1, 1, 1, 0);
        none.audit = None;
        assert_eq!(min_collateral(&none).expect("valid policy"), Amount::ZERO);
    }
}
