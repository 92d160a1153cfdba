//! Retrying and waiting: the one backoff, the retry policies that use it, and the deadlines
//! that are policy rather than plumbing.
//!
//! A bottom module: of ours it imports only `hlc::system_ms` (a jitter seed); `node`,
//! `transport` and `main` use it, so it can be read and tested alone. Deadlines that belong to one protocol stay next to it (the
//! NATS ones in `transport.rs`, the HTTP ones in `http.rs`, the database's in `db.rs`); the
//! ones here are shared, or are the promise an operator relies on (the shutdown budget).
//!
//! Nothing here reads the clock except [`Backoff::new`] (for a jitter seed): the code that waits
//! passes the durations to its own clock, so every value is unit-tested without sleeping.

use std::time::Duration;

/// The bounds of a capped exponential backoff: the first delay and the largest one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub first: Duration,
    pub cap: Duration,
}

impl Policy {
    pub const fn new(first: Duration, cap: Duration) -> Policy {
        Policy { first, cap }
    }

    /// A fresh backoff with these bounds.
    pub fn backoff(self) -> Backoff {
        Backoff::new(self.first, self.cap)
    }
}

/// Retrying a failing database step in the loop (a locked database, a full disk). A quarter
/// second lets a competing writer finish; the 30 s cap keeps a node that waits on a long
/// outage from spinning, yet near enough to notice the repair within a minute.
pub const DB_STEP: Policy = Policy::new(Duration::from_millis(250), Duration::from_secs(30));

/// Opening the node at start-up while the database is locked (an application migration holds
/// it). Twice the loop's first delay: the process has just started and there is nothing to
/// keep up with yet; the same 30 s cap as [`DB_STEP`].
pub const NODE_OPEN: Policy = Policy::new(Duration::from_millis(500), Duration::from_secs(30));

/// Resuming an interrupted snapshot download. Short, because the chunks already on disk are
/// kept and the server usually comes back within seconds; capped at 10 s because a restore
/// blocks the node's start and every second of it is downtime.
pub const SNAPSHOT_DOWNLOAD: Policy =
    Policy::new(Duration::from_millis(250), Duration::from_secs(10));

/// Looking again for a snapshot after a failed restore or catch-up. Capped at
/// [`REPEAT_LOG_EVERY`] so each retry can say why it still waits without flooding the log.
pub const RESTORE: Policy = Policy::new(Duration::from_secs(1), REPEAT_LOG_EVERY);

/// The same warning is repeated at most this often: an operator tailing the log sees a
/// persisting problem within a minute, and a problem lasting a day writes 1,440 lines, not a
/// million.
pub const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);

/// The shutdown budget (invariant 9: SIGTERM exits within 5 s, the common `stop` timeout of
/// init systems and container runtimes being 10 s, half of it kept as margin).
///
/// After the first signal, a node still waiting on the network this long cuts its link (the
/// flush below normally ends well before).
pub const SHUTDOWN_OVERDUE: Duration = Duration::from_millis(1500);
/// After the first signal the process exits within this long, whatever the link does. Exiting
/// at any moment is safe: the outbox and the cursor are in SQLite.
pub const EXIT_DEADLINE: Duration = Duration::from_millis(4500);
/// How long shutdown may spend flushing the outbox. It only starts after the server answered
/// a PING within `transport::PROBE_TIMEOUT` (1 s), so both fit inside [`EXIT_DEADLINE`].
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

/// Stopping a child process (the embedded nats-server): SIGTERM, then this long for it to
/// exit before SIGKILL. nats-server drains JetStream to disk on SIGTERM; 5 s covers it on an
/// SD card.
pub const CHILD_STOP: Duration = Duration::from_secs(5);

/// Capped exponential backoff with jitter; resets on success.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    /// Starts at `min`; the jitter is seeded from the wall clock so nodes restarted together
    /// do not retry in step.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff::with_seed(min, max, crate::hlc::system_ms())
    }

    /// The same with a given jitter seed (tests, or anyone who wants a repeatable sequence).
    pub fn with_seed(min: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            next: min,
            min,
            max,
            // xorshift never leaves 0
            seed: seed | 1,
        }
    }

    /// The delay before the next attempt: the current step plus up to 25% jitter, then doubled.
    pub fn fail(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let base = self.next;
        let jitter = base.mul_f64((self.seed % 1000) as f64 / 4000.0);
        self.next = self.next.saturating_mul(2).min(self.max);
        base.saturating_add(jitter).min(self.max)
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_with_at_most_a_quarter_of_jitter_up_to_the_cap() {
        for seed in [0, 1, 42, u64::MAX, 0x9e37_79b9_7f4a_7c15] {
            let mut b = Backoff::with_seed(100 * MS, 1000 * MS, seed);
            let mut step = 100 * MS;
            for _ in 0..10 {
                let d = b.fail();
                assert!(d >= step, "seed {seed}: {d:?} below the step {step:?}");
                assert!(
                    d <= step + step / 4,
                    "seed {seed}: {d:?} over 125% of {step:?}"
                );
                assert!(d <= 1000 * MS, "seed {seed}: {d:?} over the cap");
                step = (step * 2).min(1000 * MS);
            }
            // once capped, it stays at the cap (the jitter cannot push it past)
            assert_eq!(b.fail(), 1000 * MS);
        }
    }

    #[test]
    fn reset_starts_again_from_the_first_delay() {
        let mut b = Backoff::with_seed(250 * MS, 30_000 * MS, 7);
        for _ in 0..20 {
            b.fail();
        }
        b.reset();
        let d = b.fail();
        assert!(d >= 250 * MS && d <= 250 * MS + 250 * MS / 4, "{d:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_delays_and_seeds_spread_them() {
        let run = |seed| {
            let mut b = Backoff::with_seed(MS * 1000, MS * 60_000, seed);
            (0..5).map(|_| b.fail()).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn extreme_bounds_never_panic() {
        let mut b = Backoff::with_seed(Duration::ZERO, Duration::from_secs(1), 3);
        assert_eq!(b.fail(), Duration::ZERO);
        let mut b = Backoff::with_seed(Duration::MAX, Duration::MAX, 3);
        assert_eq!(b.fail(), Duration::MAX);
        assert_eq!(b.fail(), Duration::MAX);
    }

    #[test]
    fn policies_start_below_their_caps() {
        for p in [DB_STEP, NODE_OPEN, SNAPSHOT_DOWNLOAD, RESTORE] {
            assert!(p.first > Duration::ZERO && p.first < p.cap, "{p:?}");
            let mut b = p.backoff();
            assert!(b.fail() <= p.first + p.first / 4);
        }
    }

    #[test]
    fn the_shutdown_budget_adds_up() {
        // the flush starts after a PING answered within the probe deadline
        let probe = Duration::from_secs(1);
        assert!(probe + SHUTDOWN_FLUSH < EXIT_DEADLINE);
        assert!(SHUTDOWN_OVERDUE < EXIT_DEADLINE);
        assert!(EXIT_DEADLINE < Duration::from_secs(5));
    }
}
