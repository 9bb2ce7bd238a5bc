//! When and how often a failed registry operation is tried again.
//!
//! Retried: connection failures, resets and timeouts (any transport error, a stalled upload),
//! HTTP 408, 429 and 5xx, from the registry or its token server. Not retried: other 4xx, digest
//! or size mismatches, local I/O. Waits grow exponentially with jitter; a `Retry-After` in seconds is honoured. An
//! operation gets at most [`Policy::max_attempts`] tries and no new try starts once
//! [`Policy::budget`] has passed since the first, so a dead registry fails within about a minute.
//! Jitter comes from a small PRNG seeded from the clock: it changes timing only, never bytes.

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::error::RegistryError;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub max_attempts: u32,
    /// The wait before the second try; doubled for each further try, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No try starts later than this after the first one.
    pub budget: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            budget: Duration::from_secs(60),
        }
    }
}

/// Whether an error is worth another try, and the wait the server asked for, if any.
pub(crate) fn retryable(e: &RegistryError) -> Option<Option<Duration>> {
    match e {
        RegistryError::Connect { .. } | RegistryError::Stalled { .. } => Some(None),
        RegistryError::Transport { source, .. } | RegistryError::TokenTransport { source, .. } => {
            (!source.is_builder() && !source.is_redirect()).then_some(None)
        }
        RegistryError::Status {
            status,
            retry_after,
            ..
        } => status_is_retryable(*status).then_some(*retry_after),
        RegistryError::TokenStatus { status, .. } => status_is_retryable(*status).then_some(None),
        _ => None,
    }
}

pub(crate) fn status_is_retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
    ) || status.is_server_error()
}

/// `Retry-After: SECONDS` (the HTTP-date form is ignored: the backoff applies then).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

impl Policy {
    /// The wait after failed try number `attempt` (1-based): `base · 2^(attempt-1)`, capped, then
    /// "equal jitter" (half fixed, half random), and at least what the server asked for.
    pub(crate) fn delay(&self, attempt: u32, asked: Option<Duration>, rng: &mut Rng) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        let half = exp / 2;
        let jitter = half.mul_f64(rng.unit());
        (half + jitter).max(asked.unwrap_or_default())
    }

    /// Run `attempt` until it succeeds, fails for good, or the policy gives up; the error returned
    /// then says how many tries were made.
    pub(crate) async fn run<T, F, Fut>(&self, mut attempt: F) -> Result<T, RegistryError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let start = Instant::now();
        let mut rng = Rng::from_clock();
        let mut n = 1;
        loop {
            let mut err = match attempt(n).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Some(asked) = retryable(&err) else {
                err.set_attempts(n);
                return Err(err);
            };
            let wait = self.delay(n, asked, &mut rng);
            if n >= self.max_attempts || start.elapsed() + wait > self.budget {
                err.set_attempts(n);
                return Err(err);
            }
            tokio::time::sleep(wait).await;
            n += 1;
        }
    }
}

/// xorshift64*: enough to spread retries; not for anything that must be unpredictable.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng::seeded(nanos ^ u64::from(std::process::id()).rotate_left(32))
    }

    pub(crate) fn seeded(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::error::{ErrorDetails, Operation};

    /// The default policy with millisecond waits, so the tests do not sleep for seconds.
    fn fast() -> Policy {
        Policy {
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            ..Policy::default()
        }
    }

    fn status(code: u16, retry_after: Option<Duration>) -> RegistryError {
        RegistryError::Status {
            op: Box::new(Operation::FetchManifest {
                reference: "r.example/a:b".into(),
            }),
            status: StatusCode::from_u16(code).unwrap(),
            details: ErrorDetails::default(),
            hint: None,
            retry_after,
            attempts: 1,
        }
    }

    #[test]
    fn retries_408_429_and_5xx_but_no_other_4xx() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(retryable(&status(code, None)).is_some(), "{code}");
        }
        for code in [400, 401, 403, 404, 405, 409, 416] {
            assert!(retryable(&status(code, None)).is_none(), "{code}");
        }
        let asked = Some(Duration::from_secs(3));
        assert_eq!(retryable(&status(429, asked)), Some(asked));
    }

    #[test]
    fn retry_after_seconds_only() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, " 7 ".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn delays_grow_with_jitter_within_bounds_and_honour_retry_after() {
        let p = Policy::default();
        let mut rng = Rng::seeded(42);
        for attempt in 1..=8 {
            let exp = (p.base_delay * (1 << (attempt - 1))).min(p.max_delay);
            for _ in 0..100 {
                let d = p.delay(attempt, None, &mut rng);
                assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d:?}");
            }
        }
        let d = p.delay(1, Some(Duration::from_secs(5)), &mut rng);
        assert_eq!(d, Duration::from_secs(5));
        // The worst case of all waits stays well inside the budget.
        let worst: Duration = (1..p.max_attempts)
            .map(|a| (p.base_delay * (1 << (a - 1))).min(p.max_delay))
            .sum();
        assert!(worst < p.budget / 4, "{worst:?}");
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_says_so() {
        let p = fast();
        let mut calls = 0;
        let r: Result<(), _> = p
            .run(|_| {
                calls += 1;
                async { Err(status(503, None)) }
            })
            .await;
        assert_eq!(calls, 5);
        assert!(r.unwrap_err().to_string().contains("after 5 attempts"));
    }

    #[tokio::test]
    async fn stops_at_once_on_a_client_error_and_succeeds_after_a_transient_one() {
        let p = fast();
        let mut calls = 0;
        let r: Result<(), _> = p
            .run(|_| {
                calls += 1;
                async { Err(status(404, None)) }
            })
            .await;
        assert_eq!(calls, 1);
        assert!(!r.unwrap_err().to_string().contains("attempts"));
        let r = p
            .run(|n| async move { if n < 3 { Err(status(502, None)) } else { Ok(n) } })
            .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_budget_ends_the_operation() {
        let p = fast();
        let mut calls = 0;
        let r: Result<(), _> = p
            .run(|_| {
                calls += 1;
                async { Err(status(429, Some(Duration::from_secs(3600)))) }
            })
            .await;
        assert_eq!(calls, 1);
        assert!(r.is_err());
    }
}
