//! Backoff between attempts: exponential with full jitter, never shorter than what the server
//! asked for (Retry-After), capped so a hostile header cannot park the pod for hours.

use std::future::Future;
use std::time::Duration;

use crate::error::{Result, Retry};
use crate::progress::Reporter;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per chunk without progress before giving up (the first try included).
    pub max_attempts: u32,
    pub base: Duration,
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(250),
            max_wait: Duration::from_secs(30),
        }
    }
}

/// The longest Retry-After we honour.
const MAX_SERVER_WAIT: Duration = Duration::from_secs(300);

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (`attempt` ≥ 1 failures so far).
    pub fn wait(&self, attempt: u32, server: Option<Duration>, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_wait);
        let ours = exp.mul_f64(jitter.clamp(0.0, 1.0));
        match server {
            Some(s) => s.min(MAX_SERVER_WAIT).max(ours),
            None => ours,
        }
    }
}

/// Runs `op` until it succeeds, fails for good, or has failed `max_attempts` times in a row.
/// For whole operations (opening a source, listing); chunk fetches resume instead
/// (`transfer::fetch_chunk`).
pub async fn retrying<T, F, Fut>(
    policy: &RetryPolicy,
    reporter: &dyn Reporter,
    what: &str,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut failures = 0;
    loop {
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Retry::After(server_wait) = err.retry() else {
            return Err(err);
        };
        failures += 1;
        if failures >= policy.max_attempts {
            return Err(err.context(format!("giving up on {what} after {failures} attempts")));
        }
        let wait = policy.wait(failures, server_wait, fastrand::f64());
        reporter.retry(what, failures, &err, wait);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max_wait: Duration::from_secs(1),
        };
        assert_eq!(p.wait(1, None, 1.0), Duration::from_millis(100));
        assert_eq!(p.wait(3, None, 1.0), Duration::from_millis(400));
        assert_eq!(p.wait(30, None, 1.0), Duration::from_secs(1));
        assert_eq!(p.wait(3, None, 0.5), Duration::from_millis(200));
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(7)), 1.0),
            Duration::from_secs(7)
        );
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(9999)), 1.0),
            MAX_SERVER_WAIT
        );
    }
}
