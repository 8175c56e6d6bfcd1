//! A small seeded random number generator: plans (negative sampling), dropout masks and
//! freshly initialised weights all draw from it, so the same seed gives the same run on every
//! platform. Its own crate so that the plugin API (which re-exports it as
//! `crosstrain_plugin_api::rng`) and the model crate share it without the model depending on
//! the ABI.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

/// SplitMix64: tiny, fast, and good enough for sampling negatives.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// A generator for this seed.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The generator's whole state: `SeededRng::new(rng.state())` continues the same stream,
    /// which is how a host replays dropout masks.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// Moves `draws` draws ahead without drawing them (SplitMix64's state advances by a
    /// constant per draw), so a long stream can be drawn in parallel pieces.
    pub fn skip(&mut self, draws: u64) {
        self.state = self.state.wrapping_add(Self::GAMMA.wrapping_mul(draws));
    }

    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        Self::mix(self.state)
    }

    /// Draw number `draw` (0-based) of the stream whose state is `state`, without drawing
    /// the ones before: SplitMix64's draws depend only on their position, so a loop over
    /// positions has no carried state and vectorises (dropout masks draw millions a step).
    #[inline(always)]
    pub fn draw_at(state: u64, draw: u64) -> u64 {
        Self::mix(state.wrapping_add(Self::GAMMA.wrapping_mul(draw.wrapping_add(1))))
    }

    #[inline(always)]
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..bound` (`bound > 0`), without modulo bias.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0) has no value to return");
        let zone = u64::MAX - u64::MAX % bound;
        loop {
            let value = self.next_u64();
            if value < zone {
                return value % bound;
            }
        }
    }

    /// `count` distinct items of `pool`, drawn uniformly without replacement, in draw order
    /// (as `torch.multinomial(weights, count)` with equal weights returns them).
    pub fn sample_without_replacement<T: Copy>(&mut self, pool: &[T], count: usize) -> Vec<T> {
        let mut remaining = pool.to_vec();
        let count = count.min(remaining.len());
        let mut drawn = Vec::with_capacity(count);
        for _ in 0..count {
            let index = self.below(remaining.len() as u64) as usize;
            drawn.push(remaining.swap_remove(index));
        }
        drawn
    }
}

/// A seed for one purpose and index, derived from the run's seed so that each stream
/// (shuffling, dropout, in-batch negatives) is independent and reproducible.
pub fn derive_seed(seed: u64, purpose: u64, index: u64) -> u64 {
    let mut z = seed
        ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xBF58_476D_1CE4_E5B9).rotate_left(31);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_at_positions_are_the_stream() {
        let mut rng = SeededRng::new(1234);
        rng.next_u64();
        let state = rng.state();
        for draw in 0..100 {
            assert_eq!(
                SeededRng::draw_at(state, draw),
                rng.next_u64(),
                "draw {draw}"
            );
        }
    }

    #[test]
    fn sampling_is_distinct_seeded_and_uniform() {
        let pool: Vec<u32> = (0..10).collect();
        let mut rng = SeededRng::new(7);
        let drawn = rng.sample_without_replacement(&pool, 4);
        let mut sorted = drawn.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 4, "draws must be distinct: {drawn:?}");
        assert_eq!(
            SeededRng::new(7).sample_without_replacement(&pool, 4),
            drawn,
            "same seed, same draw"
        );
        // Each item should be drawn about 4/10 of the time.
        let mut counts = [0u32; 10];
        let mut rng = SeededRng::new(1);
        for _ in 0..20_000 {
            for item in rng.sample_without_replacement(&pool, 4) {
                counts[item as usize] += 1;
            }
        }
        for count in counts {
            assert!((7_400..8_600).contains(&count), "counts {counts:?}");
        }
    }

    #[test]
    fn asking_for_more_than_the_pool_returns_the_pool() {
        let mut rng = SeededRng::new(3);
        assert_eq!(rng.sample_without_replacement(&[5u8, 6], 9).len(), 2);
    }

    #[test]
    fn derived_seeds_differ_by_purpose_and_index() {
        let a = derive_seed(12, 1, 0);
        assert_ne!(a, derive_seed(12, 2, 0));
        assert_ne!(a, derive_seed(12, 1, 1));
        assert_ne!(a, derive_seed(13, 1, 0));
        assert_eq!(a, derive_seed(12, 1, 0));
    }
}
