//! Per-object exponential backoff after reconcile errors: base, 2x base, 4x base ... up to a
//! cap. The failure count of an object is reset by its next successful reconcile.

use std::time::Duration;

/// The delay before retrying an object that has failed `failures` times in a row (>= 1).
pub fn delay(failures: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << doublings).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(300);

    #[test]
    fn doubles_per_failure() {
        let got: Vec<u128> = (1..=6).map(|n| delay(n, BASE, CAP).as_millis()).collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 8000, 16000]);
    }

    #[test]
    fn is_capped_and_never_overflows() {
        assert_eq!(delay(11, BASE, CAP), CAP);
        assert_eq!(delay(u32::MAX, BASE, CAP), CAP);
        assert_eq!(delay(40, Duration::MAX, CAP), CAP);
    }

    #[test]
    fn zero_failures_is_treated_as_the_first() {
        assert_eq!(delay(0, BASE, CAP), BASE);
    }
}
