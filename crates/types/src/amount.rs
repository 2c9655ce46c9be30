//! Integer money and compute units. Never floats.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An amount of the ledger's currency in micro-units (1 unit = 1_000_000 micro).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Amount(pub u64);

/// Micro-units per whole unit of currency.
pub const MICRO_PER_UNIT: u64 = 1_000_000;

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub fn checked_add(self, o: Amount) -> Option<Amount> {
        self.0.checked_add(o.0).map(Amount)
    }
    pub fn checked_sub(self, o: Amount) -> Option<Amount> {
        self.0.checked_sub(o.0).map(Amount)
    }
    pub fn saturating_sub(self, o: Amount) -> Amount {
        Amount(self.0.saturating_sub(o.0))
    }
    pub fn min(self, o: Amount) -> Amount {
        Amount(self.0.min(o.0))
    }
    /// `self * num / den`, rounded down, computed in 128 bits. `None` when `den == 0` or
    /// the result does not fit.
    pub fn mul_div(self, num: u64, den: u64) -> Option<Amount> {
        if den == 0 {
            return None;
        }
        u64::try_from(u128::from(self.0) * u128::from(num) / u128::from(den))
            .ok()
            .map(Amount)
    }
    /// Whole units, for display.
    pub fn from_units(units: u64) -> Option<Amount> {
        units.checked_mul(MICRO_PER_UNIT).map(Amount)
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({})", self.0)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:06}",
            self.0 / MICRO_PER_UNIT,
            self.0 % MICRO_PER_UNIT
        )
    }
}

/// Compute units of a stack. One unit is one token (input or output) of the stack's model.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Units(pub u64);

impl Units {
    pub fn checked_add(self, o: Units) -> Option<Units> {
        self.0.checked_add(o.0).map(Units)
    }
    pub fn checked_sub(self, o: Units) -> Option<Units> {
        self.0.checked_sub(o.0).map(Units)
    }
}

impl fmt::Display for Units {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mul_div_is_exact_in_128_bits() {
        assert_eq!(Amount(u64::MAX).mul_div(3, 3), Some(Amount(u64::MAX)));
        assert_eq!(Amount(10).mul_div(1, 0), None);
        assert_eq!(Amount(u64::MAX).mul_div(2, 1), None);
        assert_eq!(Amount(7).mul_div(1, 2), Some(Amount(3)));
    }

    #[test]
    fn display_shows_six_decimals() {
        assert_eq!(Amount(1_500_000).to_string(), "1.500000");
    }
}
