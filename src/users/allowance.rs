//! Allowances: how much a stream may relay before it asks its user's actor again.
//!
//! A stream relays output only within an allowance it holds (reserve, then relay). An allowance
//! is promised spend: the caps' headroom counts it as taken until the stream reports what it
//! used (and gets a new allowance in place of the old) or settles, so the sum of all open
//! allowances never exceeds the headroom, and no stream can carry its user (or the
//! organisation) past a cap. The rule, [`share`], is the same in the book, in the Redis scripts
//! (`meter.lua`, `admit.lua`, in tokens) and in the organisation's script (`org.lua`, in
//! micro-USD).

/// The relay's batch bounds: far from a cap it is granted `max` tokens at a time (few calls);
/// near one, the grant shrinks with the headroom but not below `min` (unless less is left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub min: u64,
    pub max: u64,
}

/// What a stream asks for when it reports: an allowance of at least `needed` tokens (the chunk
/// it holds), in batches of `batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub needed: u64,
    pub batch: Batch,
}

/// The allowance granted from `free` (what no one else holds, in any unit) to one of `open`
/// requests that needs at least `needed` now (the chunk in hand) and would like `batch.max`: half the free headroom split among the open requests, within the batch
/// bounds, at least `needed`, never more than `free`. Less than `needed` only when `free` is:
/// a cap is reached.
pub fn share(free: u64, open: u64, Ask { needed, batch }: Ask) -> u64 {
    if free < needed {
        return free;
    }
    let split = free / (2 * open.max(1));
    split.max(batch.min).min(batch.max).max(needed).min(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: Batch = Batch { min: 16, max: 256 };

    fn share(free: u64, open: u64, needed: u64, batch: Batch) -> u64 {
        super::share(free, open, Ask { needed, batch })
    }

    #[test]
    fn far_from_a_cap_the_whole_batch_is_granted() {
        assert_eq!(share(1_000_000, 3, 1, BATCH), 256);
        assert_eq!(share(1_000_000, 3, 0, BATCH), 256);
    }

    #[test]
    fn near_a_cap_the_grant_halves_down_to_the_small_batch_then_takes_the_rest() {
        assert_eq!(share(200, 1, 1, BATCH), 100);
        assert_eq!(share(100, 1, 1, BATCH), 50);
        assert_eq!(share(40, 2, 1, BATCH), 16, "not below the small batch");
        assert_eq!(share(9, 1, 1, BATCH), 9, "the last of the headroom");
        assert_eq!(share(0, 1, 0, BATCH), 0);
    }

    #[test]
    fn the_chunk_in_hand_is_covered_if_the_headroom_allows_it() {
        assert_eq!(share(200, 1, 120, BATCH), 120);
        assert_eq!(
            share(1_000, 1, 300, BATCH),
            300,
            "past the batch if need be"
        );
        assert_eq!(
            share(5, 1, 7, BATCH),
            5,
            "less than needed: the cap is reached"
        );
    }

    #[test]
    fn never_more_than_is_free() {
        for free in 0..600 {
            for open in 1..6 {
                for needed in [0, 1, 5, 40] {
                    let granted = share(free, open, needed, BATCH);
                    assert!(granted <= free);
                    assert!(granted >= needed.min(free));
                }
            }
        }
    }
}
