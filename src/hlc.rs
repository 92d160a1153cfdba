//! Hybrid logical clock: 48 bits of wall-clock milliseconds, 16 bits of logical counter.
//!
//! Invariant: every stamp is greater than every stamp this node issued or saw before, even
//! across restarts (the high-water mark is persisted by the caller in the same transaction as
//! the stamps) and even when the wall clock jumps back or boots at 1970.

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;
/// The latest wall-clock time a stamp may carry: 3000-01-01T00:00:00Z in Unix milliseconds.
/// A remote stamp past it comes from a broken clock or a corrupt frame and is not observed (it
/// would drag every later stamp of ours there, and a little further, to the end of the range).
pub const MAX_WALL_MS: u64 = 32_503_680_000_000;
/// The largest stamp [`Hlc::observe`] accepts: [`MAX_WALL_MS`] with a full logical counter.
pub const MAX_STAMP: u64 = ((MAX_WALL_MS + 1) << LOGICAL_BITS) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// Resumes from a persisted high-water mark.
    pub fn new(persisted: u64) -> Hlc {
        Hlc { last: persisted }
    }

    /// The highest stamp issued or observed; persist it to keep the clock monotonic.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// A new stamp for a change the application made at `wall_ms` (Unix milliseconds).
    /// Never panics and never wraps: a corrupt persisted mark at the top of the range makes
    /// the stamp stay there (saturate) rather than wrap to 0 and lose every conflict.
    pub fn stamp(&mut self, wall_ms: u64) -> u64 {
        let physical = wall_ms.min(MAX_WALL_MS) << LOGICAL_BITS;
        self.last = physical.max(self.last.saturating_add(1));
        self.last
    }

    /// Takes a stamp seen from another node into account, so our next stamps order after it.
    /// A stamp past [`MAX_STAMP`] is refused (returns false) and leaves the clock alone.
    pub fn observe(&mut self, remote: u64) -> bool {
        if remote > MAX_STAMP {
            return false;
        }
        self.last = self.last.max(remote);
        true
    }
}

/// The wall-clock milliseconds inside a stamp.
pub fn wall_ms(stamp: u64) -> u64 {
    stamp >> LOGICAL_BITS
}

/// Current Unix time in milliseconds as this node sees it (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    (system_ms() as i64 + clock_offset_ms()).max(0) as u64
}

/// The machine's Unix time in milliseconds, without the test offset of [`clock_offset_ms`]
/// (log timestamps, jitter seeds); 0 if the clock is before 1970.
pub fn system_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `HL_FAKE_CLOCK_OFFSET_MS`: a signed offset added to every wall-clock reading of this node,
/// the sidecar's and the application's write times alike. For tests of clock trouble (a device
/// booting at 1970, a clock an hour ahead); unset in production.
pub fn clock_offset_ms() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("HL_FAKE_CLOCK_OFFSET_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// Applies the test clock offset to a wall-clock time recorded by the application's trigger.
pub fn adjust_ms(app_ms: i64) -> u64 {
    (app_ms + clock_offset_ms()).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_wall_clock() {
        let mut h = Hlc::new(0);
        assert_eq!(h.stamp(1000), 1000 << 16);
        assert_eq!(h.stamp(2000), 2000 << 16);
    }

    #[test]
    fn same_millisecond_counts_up() {
        let mut h = Hlc::new(0);
        let a = h.stamp(1000);
        let b = h.stamp(1000);
        assert_eq!(b, a + 1);
        assert_eq!(wall_ms(b), 1000);
    }

    #[test]
    fn clock_jumping_back_still_increases() {
        let mut h = Hlc::new(0);
        let a = h.stamp(5_000_000);
        let b = h.stamp(10); // the clock went back to near 1970
        assert!(b > a);
        assert_eq!(b, a + 1);
    }

    #[test]
    fn monotonic_across_restart() {
        let mut h = Hlc::new(0);
        let a = h.stamp(7_000);
        let mut restarted = Hlc::new(h.last());
        assert!(restarted.stamp(0) > a);
    }

    #[test]
    fn observed_remote_stamps_order_later_writes() {
        let mut h = Hlc::new(0);
        h.observe(9_000 << 16);
        assert!(h.stamp(1_000) > 9_000 << 16);
        // an older remote stamp does not move the clock back
        let before = h.last();
        h.observe(5);
        assert_eq!(h.last(), before);
    }

    #[test]
    fn the_bounds_are_exact() {
        assert_eq!(MAX_STAMP, 2_130_161_172_480_065_535);
        assert_eq!(wall_ms(MAX_STAMP), MAX_WALL_MS);
        assert_eq!(MAX_STAMP & 0xFFFF, 0xFFFF);
    }

    #[test]
    fn absurd_remote_stamps_are_refused() {
        let mut h = Hlc::new(1_000 << 16);
        assert!(!h.observe(u64::MAX));
        assert!(!h.observe(MAX_STAMP + 1));
        assert_eq!(h.last(), 1_000 << 16);
        assert_eq!(h.stamp(2_000), 2_000 << 16);
        // the largest plausible one is taken
        assert!(h.observe(MAX_STAMP));
        assert_eq!(h.last(), MAX_STAMP);
    }

    #[test]
    fn a_stamp_at_the_top_saturates_instead_of_wrapping() {
        let mut h = Hlc::new(u64::MAX);
        assert_eq!(h.stamp(1_000), u64::MAX);
        assert_eq!(h.stamp(u64::MAX), u64::MAX);
        let mut h = Hlc::new(u64::MAX - 1);
        assert_eq!(h.stamp(0), u64::MAX);
        assert_eq!(h.stamp(0), u64::MAX);
    }

    #[test]
    fn a_wall_clock_past_the_bound_is_clamped() {
        let mut h = Hlc::new(0);
        assert_eq!(h.stamp(u64::MAX), MAX_WALL_MS << 16);
        assert_eq!(h.stamp(MAX_WALL_MS + 5), (MAX_WALL_MS << 16) + 1);
    }
}
