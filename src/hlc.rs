//! Hybrid logical clock: 48 bits of wall-clock milliseconds, 16 bits of logical counter.
//!
//! Invariant: every stamp is greater than every stamp this node issued or saw before, even
//! across restarts (the high-water mark is persisted by the caller in the same transaction as
//! the stamps) and even when the wall clock jumps back or boots at 1970.

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;

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
    pub fn stamp(&mut self, wall_ms: u64) -> u64 {
        let physical = wall_ms.min((1 << (64 - LOGICAL_BITS)) - 1) << LOGICAL_BITS;
        self.last = physical.max(self.last + 1);
        self.last
    }

    /// Takes a stamp seen from another node into account, so our next stamps order after it.
    pub fn observe(&mut self, remote: u64) {
        self.last = self.last.max(remote);
    }
}

/// The wall-clock milliseconds inside a stamp.
pub fn wall_ms(stamp: u64) -> u64 {
    stamp >> LOGICAL_BITS
}

/// Current Unix time in milliseconds as this node sees it (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    (real + clock_offset_ms()).max(0) as u64
}

/// `HL_FAKE_CLOCK_OFFSET_MS`: a signed offset added to every wall-clock reading of this node,
/// the sidecar's and the application's write times alike. For tests of clock trouble (a device
/// booting at 1970, a clock an hour ahead); unset in production.
pub fn clock_offset_ms() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("HL_FAKE_CLOCK_OFFSET_MS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0)
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
}
