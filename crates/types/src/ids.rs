//! Identifiers. Each kind of object has its own newtype so they cannot be mixed up.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! numeric_id {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(
            Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.strip_prefix($prefix).unwrap_or(s).parse().map($name)
            }
        }
    };
}

numeric_id!(
    /// A registered execution node.
    NodeId, "node-"
);
numeric_id!(
    /// A stack of prepaid compute units.
    StackId, "stack-"
);
numeric_id!(
    /// A settlement claim on a stack.
    ClaimId, "claim-"
);
numeric_id!(
    /// An audit of one sampled receipt.
    AuditId, "audit-"
);
numeric_id!(
    /// A dispute opened by disagreeing verdicts.
    DisputeId, "dispute-"
);

/// A model's identifier as it appears in OpenAI requests (e.g. `smollm2-135m-instruct`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelId(pub String);

impl ModelId {
    pub fn new(s: impl Into<String>) -> Self {
        ModelId(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_with_or_without_prefix() {
        assert_eq!("stack-7".parse::<StackId>().unwrap(), StackId(7));
        assert_eq!("7".parse::<StackId>().unwrap(), StackId(7));
        assert!("stack-x".parse::<StackId>().is_err());
        assert_eq!(NodeId(3).to_string(), "node-3");
    }
}
