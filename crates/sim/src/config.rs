//! What a run is asked to simulate, checked before anything runs (`SimConfig::validate`).

use serde::Serialize;
use sortition_ledger::policy::PPM;

/// Why a simulation cannot start.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimError {
    #[error("{name} must be in [0, 1], got {value}")]
    OutOfUnitRange { name: &'static str, value: f64 },
    #[error("q must be in (0, 1] (the ledger refuses q = 0 for an audited model), got {0}")]
    BadQ(f64),
    #[error("at least one node is needed (--nodes 0)")]
    ZeroNodes,
    #[error("at least one request is needed (--requests 0)")]
    ZeroRequests,
    #[error("k must be at least 1")]
    ZeroK,
    #[error(
        "k = {k} auditors is larger than a class allows: {class_size} nodes per class leave {peers} peers besides the executor (use fewer --classes or a smaller --k)"
    )]
    KLargerThanClass { k: u8, class_size: u64, peers: u64 },
    #[error("--classes must be between 1 and --nodes ({nodes}), got {classes}")]
    BadClasses { classes: u64, nodes: u64 },
    #[error(
        "stake overflows: {nodes} nodes × stake {stake} (+ their margin) does not fit the ledger's u64 supply"
    )]
    StakeOverflow { nodes: u64, stake: u64 },
    #[error("stake {stake} is below the ledger's minimum collateral {min} for this policy")]
    StakeBelowMinimum { stake: u64, min: u64 },
    #[error("the strategy shares add up to {0} (> 1): honest nodes take what is left")]
    MixOverOne(f64),
    #[error("unknown strategy {0:?} (known: {1})")]
    UnknownStrategy(String, String),
    #[error("bad --mix entry {0:?}: expected NAME=SHARE")]
    BadMixEntry(String),
    #[error("--receipts-per-claim must be between 1 and 1000000, got {0}")]
    BadReceiptsPerClaim(u64),
    #[error("the ledger refuses this policy: {0}")]
    Policy(String),
    #[error("ledger: {0}")]
    Ledger(String),
}

/// An executor's (and auditor's) behaviour. Every node has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Serves every request honestly, audits honestly.
    Honest,
    /// Cheats on every request (e.g. answers with a cheaper model).
    AlwaysCheat,
    /// Cheats on a fraction `cheat_p` of requests, at random.
    CheatFraction,
    /// Cheats only on long prompts (input above `long_prompt_tokens`), where cheating saves most.
    Selective,
    /// Cheats on `cheat_p` of requests, using all public information: it predicts the
    /// randomness its claim will be sampled with (and the claim's id), cheats only on the
    /// receipts that prediction leaves unsampled, and delays its claim while the prediction
    /// would still sample a cheat. Right against a predictable beacon, blind against the
    /// threshold one.
    TimingDodger,
    /// Serves honestly but inflates the token count of `cheat_p` of its receipts.
    OverReport,
    /// Cheats on `cheat_p` of confidential requests (custody: executor) and withholds the
    /// payload from the auditors whenever such a receipt is sampled.
    Withhold,
    /// Honest executor, lazy auditor: votes `Match` without re-executing (copies the claim).
    LazyCopy,
    /// Honest executor, lazy auditor: never commits a verdict (skips).
    LazySkip,
    /// A ring of colluders (share r of each class): cheats on every request and, as auditor
    /// or committee member, votes `Match` on the ring's cheats (truthfully otherwise).
    Colluder,
}

impl Strategy {
    pub const ALL: [Strategy; 10] = [
        Strategy::Honest,
        Strategy::AlwaysCheat,
        Strategy::CheatFraction,
        Strategy::Selective,
        Strategy::TimingDodger,
        Strategy::OverReport,
        Strategy::Withhold,
        Strategy::LazyCopy,
        Strategy::LazySkip,
        Strategy::Colluder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Honest => "honest",
            Strategy::AlwaysCheat => "always-cheat",
            Strategy::CheatFraction => "cheat-fraction",
            Strategy::Selective => "selective",
            Strategy::TimingDodger => "timing-dodger",
            Strategy::OverReport => "over-report",
            Strategy::Withhold => "withhold",
            Strategy::LazyCopy => "lazy-copy",
            Strategy::LazySkip => "lazy-skip",
            Strategy::Colluder => "colluder",
        }
    }

    pub fn parse(s: &str) -> Result<Strategy, SimError> {
        Strategy::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Strategy::ALL.iter().map(|x| x.name()).collect();
                SimError::UnknownStrategy(s.into(), known.join(", "))
            })
    }

    /// Whether this strategy's executors ever serve a wrong answer or usage.
    pub fn cheats(self) -> bool {
        !matches!(
            self,
            Strategy::Honest | Strategy::LazyCopy | Strategy::LazySkip
        )
    }
}

/// Which beacon the ledger runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BeaconMode {
    /// A freshly dealt BLS threshold group (what the ledger requires in production): nobody
    /// outside the group can predict a block's randomness.
    Threshold,
    /// The ledger's *insecure test group*, whose secret share is published: anyone can compute
    /// every future block's randomness, exactly like the genesis-seeded hash chain it replaced.
    Predictable,
}

/// The strategy mix: each strategy's share of the nodes of every class; honest takes the rest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mix(pub Vec<(Strategy, f64)>);

impl Mix {
    /// `name=share,name=share,...`, e.g. `always-cheat=0.05,colluder=0.1`.
    pub fn parse(s: &str) -> Result<Mix, SimError> {
        let mut v = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, share) = part
                .split_once('=')
                .ok_or_else(|| SimError::BadMixEntry(part.into()))?;
            let share: f64 = share
                .trim()
                .parse()
                .map_err(|_| SimError::BadMixEntry(part.into()))?;
            v.push((Strategy::parse(name.trim())?, share));
        }
        Ok(Mix(v))
    }

    /// The default: every strategy present, 59 % honest.
    pub fn standard() -> Mix {
        use Strategy::*;
        Mix(vec![
            (AlwaysCheat, 0.05),
            (CheatFraction, 0.05),
            (Selective, 0.05),
            (TimingDodger, 0.05),
            (OverReport, 0.05),
            (Withhold, 0.05),
            (LazyCopy, 0.03),
            (LazySkip, 0.03),
            (Colluder, 0.05),
        ])
    }

    pub fn share(&self, s: Strategy) -> f64 {
        if s == Strategy::Honest {
            return 1.0 - self.0.iter().map(|(_, p)| p).sum::<f64>();
        }
        self.0.iter().filter(|(x, _)| *x == s).map(|(_, p)| p).sum()
    }
}

/// Everything one run needs. Amounts are integers, as on the ledger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimConfig {
    pub nodes: u64,
    pub requests: u64,
    pub seed: u64,
    /// Audit probability per receipt.
    pub q: f64,
    pub k: u8,
    /// Node classes (auditors and committees come from the executor's class).
    pub classes: u64,
    /// Collateral each node registers with; `None`: the ledger's minimum for the policy.
    pub stake: Option<u64>,
    /// `C`: what re-executing (or honestly serving) one request costs.
    pub cost: u64,
    /// `R`: an auditor's reward per honest audit.
    pub reward: u64,
    /// `r` the policy assumes (enters the ledger's minimum collateral).
    pub policy_r: f64,
    pub mix: Mix,
    /// The cheat fraction of `cheat-fraction`, `timing-dodger`, `over-report` and `withhold`.
    pub cheat_p: f64,
    /// Requests (receipts) per claim: the ledger samples each receipt of a claim.
    pub receipts_per_claim: u64,
    pub beacon: BeaconMode,
    /// Price per million units (a unit is a token).
    pub price_per_m: u64,
    /// Prompts longer than this are "long" (the selective cheater's targets).
    pub long_prompt_tokens: u32,
    /// How much an over-reporter inflates a receipt's output tokens, in percent (150: ×1.5).
    pub over_report_pct: u32,
    /// Blocks a timing dodger may delay a claim waiting for a safe beacon.
    pub dodger_patience: u32,
    /// Blocks per epoch (every node rotates its confidential key at each turn).
    pub epoch_blocks: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 1_000,
            requests: 100_000,
            seed: 1,
            q: 0.001,
            k: 2,
            classes: 10,
            stake: None,
            cost: 1_000,
            reward: 100,
            policy_r: 0.1,
            mix: Mix::standard(),
            cheat_p: 0.2,
            receipts_per_claim: 10_000,
            beacon: BeaconMode::Threshold,
            price_per_m: 8_000_000,
            long_prompt_tokens: 300,
            over_report_pct: 150,
            dodger_patience: 64,
            epoch_blocks: 40,
        }
    }
}

impl SimConfig {
    pub fn q_ppm(&self) -> u32 {
        (self.q * PPM as f64).round() as u32
    }

    pub fn policy_r_ppm(&self) -> u32 {
        (self.policy_r * PPM as f64).round() as u32
    }

    /// Smallest class (nodes are dealt to classes round-robin).
    pub fn class_size(&self) -> u64 {
        self.nodes / self.classes.max(1)
    }

    /// Checks every parameter; the ledger's own policy checks run too (see `world::policy`).
    pub fn validate(&self) -> Result<(), SimError> {
        let unit = |name: &'static str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(SimError::OutOfUnitRange { name, value })
            }
        };
        unit("q", self.q)?;
        if self.q_ppm() == 0 {
            return Err(SimError::BadQ(self.q));
        }
        unit("cheat_p", self.cheat_p)?;
        unit("policy_r", self.policy_r)?;
        for (s, p) in &self.mix.0 {
            unit(s.name(), *p)?;
        }
        let total: f64 = self.mix.0.iter().map(|(_, p)| p).sum();
        if total > 1.0 + 1e-9 {
            return Err(SimError::MixOverOne(total));
        }
        if self.nodes == 0 {
            return Err(SimError::ZeroNodes);
        }
        if self.requests == 0 {
            return Err(SimError::ZeroRequests);
        }
        if self.k == 0 {
            return Err(SimError::ZeroK);
        }
        if self.classes == 0 || self.classes > self.nodes {
            return Err(SimError::BadClasses {
                classes: self.classes,
                nodes: self.nodes,
            });
        }
        let class_size = self.class_size();
        let peers = class_size.saturating_sub(1);
        if u64::from(self.k) > peers {
            return Err(SimError::KLargerThanClass {
                k: self.k,
                class_size,
                peers,
            });
        }
        if self.receipts_per_claim == 0 || self.receipts_per_claim > 1_000_000 {
            return Err(SimError::BadReceiptsPerClaim(self.receipts_per_claim));
        }
        if let Some(stake) = self.stake {
            // Each node holds its stake plus a margin of the same size for top-ups.
            let fits = stake
                .checked_mul(2)
                .and_then(|s| s.checked_mul(self.nodes))
                .is_some_and(|t| t < u64::MAX / 4);
            if !fits {
                return Err(SimError::StakeOverflow {
                    nodes: self.nodes,
                    stake,
                });
            }
        }
        Ok(())
    }
}
