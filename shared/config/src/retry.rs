//! One retry policy type for the whole fleet (restate's shape: data in the configuration,
//! serde-tagged by `kind`): the workers' redelivery of transient failures (`[worker.retry]`,
//! whose `max_attempts` is also each consumer's `max_deliver`) and the Turso Platform API
//! client (`[tenantdb.turso.retry]`).
//!
//! ```toml
//! [worker.retry]
//! kind = "exponential"   # initial_ms × factor^(n−1), at most max_ms
//! initial_ms = 250
//! factor = 2.0
//! max_ms = 30000
//! max_attempts = 5       # the first attempt included
//! jitter = true          # each delay drawn from [delay/2, delay]
//!
//! [some.retry]
//! kind = "fixed"         # the same delay every time
//! interval_ms = 1000
//! max_attempts = 3
//! ```
//!
//! The policy is pure: [`RetryPolicy::delay`] takes the randomness for the jitter as an
//! argument, so its tests pin it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a failed attempt is retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RetryPolicy {
    /// Delays growing by `factor` from `initial_ms` up to `max_ms`.
    Exponential {
        /// Delay after the first failed attempt, in milliseconds.
        initial_ms: u64,
        /// Growth per attempt (≥ 1).
        factor: f64,
        /// Longest delay, in milliseconds.
        max_ms: u64,
        /// Attempts in all, the first included (≥ 1).
        max_attempts: u32,
        /// Whether each delay is drawn from `[delay/2, delay]` (so retries of many clients
        /// spread out).
        jitter: bool,
    },
    /// The same delay after every failed attempt.
    Fixed {
        /// The delay, in milliseconds.
        interval_ms: u64,
        /// Attempts in all, the first included (≥ 1).
        max_attempts: u32,
    },
}

impl RetryPolicy {
    /// The workers' default: 250 ms doubling to 30 s, 5 attempts, jittered.
    pub fn worker_default() -> Self {
        Self::Exponential {
            initial_ms: 250,
            factor: 2.0,
            max_ms: 30_000,
            max_attempts: 5,
            jitter: true,
        }
    }

    /// The Turso Platform API client's default: 200 ms doubling to 10 s, 6 attempts, jittered.
    pub fn turso_default() -> Self {
        Self::Exponential {
            initial_ms: 200,
            factor: 2.0,
            max_ms: 10_000,
            max_attempts: 6,
            jitter: true,
        }
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        match self {
            Self::Exponential { max_attempts, .. } | Self::Fixed { max_attempts, .. } => {
                *max_attempts
            }
        }
    }

    /// The longest delay this policy ever asks for.
    pub fn max_delay(&self) -> Duration {
        match self {
            Self::Exponential { max_ms, .. } => Duration::from_millis(*max_ms),
            Self::Fixed { interval_ms, .. } => Duration::from_millis(*interval_ms),
        }
    }

    /// The delay before the next attempt after attempt number `attempt` (1 = the first) failed,
    /// or `None` when it was the last one. `unit`, in `[0, 1)`, is the randomness of the jitter
    /// (ignored without jitter).
    pub fn delay(&self, attempt: u32, unit: f64) -> Option<Duration> {
        if attempt == 0 || attempt >= self.max_attempts() {
            return None;
        }
        Some(match self {
            Self::Exponential {
                initial_ms,
                factor,
                max_ms,
                jitter,
                ..
            } => {
                let grown = *initial_ms as f64 * factor.powi(attempt as i32 - 1);
                let full = grown.min(*max_ms as f64);
                let ms = if *jitter {
                    full / 2.0 + full / 2.0 * unit.clamp(0.0, 1.0)
                } else {
                    full
                };
                Duration::from_millis(ms.round() as u64)
            }
            Self::Fixed { interval_ms, .. } => Duration::from_millis(*interval_ms),
        })
    }

    /// Every delay in order (for a retry loop such as `backon`'s), with the jitter drawn from
    /// `units`.
    pub fn delays(&self, mut units: impl FnMut() -> f64) -> Vec<Duration> {
        (1..self.max_attempts())
            .filter_map(|attempt| self.delay(attempt, units()))
            .collect()
    }

    /// Problems with the policy at `path` (e.g. `worker.retry`).
    pub fn problems(&self, path: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_attempts() == 0 {
            problems.push(format!("{path}.max_attempts: must be at least 1"));
        }
        if let Self::Exponential {
            initial_ms,
            factor,
            max_ms,
            ..
        } = self
        {
            if *factor < 1.0 || !factor.is_finite() {
                problems.push(format!("{path}.factor: {factor} must be at least 1"));
            }
            if initial_ms > max_ms {
                problems.push(format!(
                    "{path}.initial_ms: {initial_ms} is above max_ms ({max_ms})"
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_delays_grow_to_their_bound_and_stop_at_the_last_attempt() {
        let policy = RetryPolicy::Exponential {
            initial_ms: 100,
            factor: 2.0,
            max_ms: 500,
            max_attempts: 6,
            jitter: false,
        };
        let delays: Vec<u64> = (1..=6)
            .map(|n| policy.delay(n, 0.0).map_or(0, |d| d.as_millis() as u64))
            .collect();
        assert_eq!(delays, [100, 200, 400, 500, 500, 0]);
        assert_eq!(policy.delays(|| 0.5).len(), 5);
        assert_eq!(policy.delay(0, 0.0), None);
    }

    #[test]
    fn jitter_draws_each_delay_from_its_upper_half() {
        let policy = RetryPolicy::worker_default();
        assert_eq!(policy.delay(1, 0.0), Some(Duration::from_millis(125)));
        assert_eq!(policy.delay(1, 1.0), Some(Duration::from_millis(250)));
        assert_eq!(policy.delay(3, 0.5), Some(Duration::from_millis(750)));
        assert_eq!(policy.delay(5, 0.5), None, "5 attempts in all");
    }

    #[test]
    fn fixed_is_the_same_every_time_and_policies_read_as_tagged_data() {
        let policy: RetryPolicy =
            serde_json::from_str(r#"{"kind": "fixed", "interval_ms": 1000, "max_attempts": 3}"#)
                .unwrap();
        assert_eq!(policy.delays(|| 0.9), [Duration::from_secs(1); 2]);
        assert!(
            serde_json::from_str::<RetryPolicy>(r#"{"kind": "fixed", "interval": 1}"#).is_err()
        );
        let bad = RetryPolicy::Exponential {
            initial_ms: 10,
            factor: 0.5,
            max_ms: 1,
            max_attempts: 0,
            jitter: true,
        };
        assert_eq!(bad.problems("x.retry").len(), 3);
    }
}
