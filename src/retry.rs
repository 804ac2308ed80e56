//! Backoff between attempts: exponential with full jitter, never shorter than what the server
//! asked for (Retry-After), capped so a hostile header cannot park the pod for hours.

use std::future::Future;
use std::time::Duration;

use crate::error::{Condition, Result, Retry};
use crate::progress::Reporter;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per chunk without progress before giving up (the first try included).
    pub max_attempts: u32,
    pub base: Duration,
    pub max_wait: Duration,
    /// How long a streak of "slow down" replies is waited out (they count no attempts).
    pub throttle_patience: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(250),
            max_wait: Duration::from_secs(30),
            throttle_patience: THROTTLE_PATIENCE,
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
    let mut pushed_back = Patience::default();
    loop {
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Retry::After(server_wait) = err.retry() else {
            return Err(err);
        };
        // A server that asks to slow down is waited for, by the clock, not by attempts.
        let attempt = if err.condition() == Some(Condition::Throttled) {
            match pushed_back.again(policy.throttle_patience) {
                Some(n) => n,
                None => return Err(pushed_back.gave_up(err, what, policy.throttle_patience)),
            }
        } else {
            failures += 1;
            if failures >= policy.max_attempts {
                return Err(err.context(format!("giving up on {what} after {failures} attempts")));
            }
            failures
        };
        let wait = policy.wait(attempt, server_wait, fastrand::f64());
        reporter.retry(what, attempt, &err, wait);
        tokio::time::sleep(wait).await;
    }
}

/// How long, by default, a server that keeps asking to slow down (S3's 503 SlowDown comes for
/// as long as it re-partitions, to every request of a fleet, without Retry-After) is waited
/// for before the run gives up on it (`--throttle-patience`).
pub const THROTTLE_PATIENCE: Duration = Duration::from_secs(600);

/// One request's (or one listing's) streak of "slow down" replies.
#[derive(Debug, Default)]
pub struct Patience {
    since: Option<std::time::Instant>,
    count: u32,
}

impl Patience {
    /// Counts one more; the attempt number for the backoff, or None once the streak has
    /// lasted `patience`.
    pub fn again(&mut self, patience: Duration) -> Option<u32> {
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        self.count += 1;
        (since.elapsed() < patience).then_some(self.count)
    }

    /// Replies in the streak so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The error that ends the streak.
    pub fn gave_up(
        &self,
        err: crate::error::Error,
        what: &str,
        patience: Duration,
    ) -> crate::error::Error {
        err.context(format!(
            "giving up on {what}: the server kept asking to slow down for over {} s ({} replies; --throttle-patience)",
            patience.as_secs(),
            self.count
        ))
    }
}

/// Requests in flight while a server pushes back, shared by every worker of a run: like the
/// AWS SDKs' adaptive retry mode, a "slow down" reply halves how many requests may be in
/// flight (down to one) and holds every new request until a backoff has passed, growing while
/// the server keeps pushing back, so a throttled fleet stops hammering; each success lets one
/// more back in.
pub struct Throttle {
    max: usize,
    policy: RetryPolicy,
    state: std::sync::Mutex<ThrottleState>,
    changed: tokio::sync::Notify,
}

struct ThrottleState {
    limit: usize,
    in_flight: usize,
    resume_at: std::time::Instant,
    streak: u32,
    successes: usize,
    told: bool,
    /// The run is stopping: nobody waits any more.
    closed: bool,
}

/// What one "slow down" reply changed: requests in flight `from` → `to`, everyone paused for
/// `pause`; `first` for the run's first cut (told once).
#[derive(Debug, PartialEq, Eq)]
pub struct Cut {
    pub from: usize,
    pub to: usize,
    pub pause: Duration,
    pub first: bool,
}

/// A place among the requests in flight; given back when dropped.
pub struct Slot<'a>(&'a Throttle);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
        self.0.changed.notify_waiters();
    }
}

impl Throttle {
    pub fn new(max: usize, policy: RetryPolicy) -> Self {
        let max = max.max(1);
        Throttle {
            max,
            policy,
            state: std::sync::Mutex::new(ThrottleState {
                limit: max,
                in_flight: 0,
                resume_at: std::time::Instant::now(),
                streak: 0,
                successes: 0,
                told: false,
                closed: false,
            }),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ThrottleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a request may be sent: the backoff has passed and a place is free. None
    /// once the run is stopping ([`Throttle::close`]).
    pub async fn enter(&self) -> Option<Slot<'_>> {
        loop {
            let notified = self.changed.notified();
            let pause = {
                let mut st = self.lock();
                let now = std::time::Instant::now();
                if st.closed {
                    return None;
                } else if now < st.resume_at {
                    Some(st.resume_at - now)
                } else if st.in_flight < st.limit {
                    st.in_flight += 1;
                    return Some(Slot(self));
                } else {
                    None
                }
            };
            match pause {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The run is stopping: every waiter returns at once.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }

    /// A "slow down" reply: fewer in flight, and a pause for everyone, longer each time the
    /// server still pushes back after one. Replies that arrive during a pause (sent before it)
    /// change nothing (None).
    pub fn pushed_back(&self, server_wait: Option<Duration>) -> Option<Cut> {
        let mut st = self.lock();
        let now = std::time::Instant::now();
        st.successes = 0;
        if now < st.resume_at {
            return None;
        }
        let from = st.limit;
        st.limit = (st.limit / 2).max(1);
        st.streak += 1;
        let pause = self
            .policy
            .wait(st.streak, server_wait, 0.5 + fastrand::f64() / 2.0);
        st.resume_at = now + pause;
        Some(Cut {
            from,
            to: st.limit,
            pause,
            first: !std::mem::replace(&mut st.told, true),
        })
    }

    /// A request went through: after as many successes as there are places, one more place.
    pub fn succeeded(&self) {
        let mut st = self.lock();
        if std::time::Instant::now() >= st.resume_at {
            st.streak = 0;
        }
        st.successes += 1;
        if st.limit < self.max && st.successes >= st.limit {
            st.limit += 1;
            st.successes = 0;
            drop(st);
            self.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pushback_halves_the_requests_in_flight_and_successes_restore_them() {
        let t = Throttle::new(
            16,
            RetryPolicy {
                max_attempts: 3,
                base: Duration::from_millis(1),
                max_wait: Duration::from_millis(5),
                throttle_patience: THROTTLE_PATIENCE,
            },
        );
        let cut = t.pushed_back(None).unwrap();
        assert_eq!((cut.from, cut.to, cut.first), (16, 8, true));
        // Replies that arrive during the pause (sent before it): one wave is one cut.
        assert_eq!(t.pushed_back(None), None);
        assert_eq!(t.lock().limit, 8);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let slots: Vec<_> = futures_util::future::join_all((0..8).map(|_| t.enter())).await;
        assert!(slots.iter().all(Option::is_some));
        let ninth = tokio::time::timeout(Duration::from_millis(50), t.enter()).await;
        assert!(ninth.is_err(), "no ninth request while eight are in flight");
        drop(slots);
        for _ in 0..8 {
            t.succeeded();
        }
        assert_eq!(t.lock().limit, 9);
        assert_eq!(t.lock().in_flight, 0);
        // A pause in progress ends for everyone when the run stops.
        t.pushed_back(Some(Duration::from_secs(60)));
        let waiting = t.enter();
        t.close();
        assert!(tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .is_none());
    }

    #[test]
    fn patience_is_counted_by_the_clock() {
        let mut p = Patience::default();
        assert_eq!(p.again(THROTTLE_PATIENCE), Some(1));
        assert_eq!(p.again(THROTTLE_PATIENCE), Some(2));
        p.since = Some(std::time::Instant::now() - THROTTLE_PATIENCE);
        assert_eq!(p.again(THROTTLE_PATIENCE), None);
    }

    #[test]
    fn exponential_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max_wait: Duration::from_secs(1),
            throttle_patience: THROTTLE_PATIENCE,
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
