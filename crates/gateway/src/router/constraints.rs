//! A request's routing constraints, from the `X-Sortition-Constraints` JSON header.
//!
//! Example: `{"max_price": 2000000, "require_confidential": true, "require_quorum": 3,
//! "min_collateral": 100000000, "node_class": "<64 hex>", "nodes": [4, 7]}`. Unknown fields are
//! rejected, so a typo never silently loosens a requirement.

use serde::{Deserialize, Serialize};
use sortition_api::ApiError;
use sortition_types::{Amount, Hash32, NodeId};

use super::NodeView;

/// The header that carries constraints.
pub const CONSTRAINTS_HEADER: &str = "x-sortition-constraints";
/// The longest header accepted.
pub const MAX_HEADER_LEN: usize = 2048;
/// The largest quorum a request may ask for.
pub const MAX_QUORUM: u8 = 9;

/// What a request demands of the node(s) that serve it. The default demands nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Constraints {
    /// Highest acceptable price per million tokens, applied to input and output prices alike.
    pub max_price: Option<Amount>,
    /// Only nodes running in an attested confidential environment.
    pub require_confidential: bool,
    /// Run on this many nodes of one class, each of a different operator, and compare.
    pub require_quorum: Option<u8>,
    /// Only nodes with at least this much collateral at stake.
    pub min_collateral: Option<Amount>,
    /// Only nodes of this class fingerprint.
    pub node_class: Option<Hash32>,
    /// Only these nodes (ledger ids): an app that trusts particular operators, or wants one
    /// node's answer checked against its receipts. The other demands still apply to them.
    pub nodes: Option<Vec<NodeId>>,
}

/// Why a constraints header was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("constraints header is {len} bytes; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("constraints header is not valid: {0}")]
    Json(String),
    #[error("require_quorum must be between 2 and {max}, got {got}", max = MAX_QUORUM)]
    Quorum { got: u8 },
    #[error("nodes must name at least one node (leave it out to allow any)")]
    NoNodes,
}

impl From<ConstraintError> for ApiError {
    fn from(e: ConstraintError) -> Self {
        ApiError::invalid("invalid_constraints", e.to_string()).with_param(CONSTRAINTS_HEADER)
    }
}

impl Constraints {
    /// Parses the header value; an absent header means no constraints.
    pub fn from_header(value: Option<&str>) -> Result<Constraints, ConstraintError> {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Constraints::default());
        };
        if value.len() > MAX_HEADER_LEN {
            return Err(ConstraintError::TooLong {
                len: value.len(),
                max: MAX_HEADER_LEN,
            });
        }
        let c: Constraints =
            serde_json::from_str(value).map_err(|e| ConstraintError::Json(e.to_string()))?;
        if let Some(q) = c.require_quorum
            && !(2..=MAX_QUORUM).contains(&q)
        {
            return Err(ConstraintError::Quorum { got: q });
        }
        if c.nodes.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConstraintError::NoNodes);
        }
        Ok(c)
    }

    /// Whether `node` meets every per-node demand (the quorum is decided by the router).
    pub fn admits(&self, node: &NodeView) -> bool {
        let price_ok = self
            .max_price
            .is_none_or(|m| node.price_in <= m && node.price_out <= m);
        let conf_ok = !self.require_confidential || node.confidential;
        let coll_ok = self.min_collateral.is_none_or(|m| node.collateral >= m);
        let class_ok = self.node_class.is_none_or(|c| node.class == c);
        let listed = self.nodes.as_ref().is_none_or(|l| l.contains(&node.id));
        price_ok && conf_ok && coll_ok && class_ok && listed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn absent_header_means_no_constraints() {
        assert_eq!(Constraints::from_header(None), Ok(Constraints::default()));
        assert_eq!(
            Constraints::from_header(Some("  ")),
            Ok(Constraints::default())
        );
    }

    #[test]
    fn parses_every_field() {
        let class = Hash32([7; 32]);
        let h = format!(
            r#"{{"max_price": 5, "require_confidential": true, "require_quorum": 3,
                "min_collateral": 10, "node_class": "{}", "nodes": [4, 7]}}"#,
            class.to_hex()
        );
        let c = Constraints::from_header(Some(&h)).expect("valid");
        assert_eq!(c.max_price, Some(Amount(5)));
        assert!(c.require_confidential);
        assert_eq!(c.require_quorum, Some(3));
        assert_eq!(c.min_collateral, Some(Amount(10)));
        assert_eq!(c.node_class, Some(class));
        assert_eq!(c.nodes, Some(vec![NodeId(4), NodeId(7)]));
    }

    #[test]
    fn errors_are_typed_and_400() {
        assert!(matches!(
            Constraints::from_header(Some("{")),
            Err(ConstraintError::Json(_))
        ));
        assert!(matches!(
            Constraints::from_header(Some(r#"{"max_prise": 1}"#)),
            Err(ConstraintError::Json(_))
        ));
        assert_eq!(
            Constraints::from_header(Some(r#"{"require_quorum": 1}"#)),
            Err(ConstraintError::Quorum { got: 1 })
        );
        assert_eq!(
            Constraints::from_header(Some(r#"{"nodes": []}"#)),
            Err(ConstraintError::NoNodes)
        );
        let long = format!(r#"{{"max_price": {}}}"#, "1".repeat(MAX_HEADER_LEN));
        assert!(matches!(
            Constraints::from_header(Some(&long)),
            Err(ConstraintError::TooLong { .. })
        ));
        let api: ApiError = ConstraintError::Quorum { got: 0 }.into();
        assert_eq!(api.status().as_u16(), 400);
    }
}
