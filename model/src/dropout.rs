//! Dropout that really drops in training, driven by a seeded random stream that every dropout
//! layer of a model shares, so a run is reproducible from its seed and a forward pass can be
//! replayed with the same masks (gradient caching).

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{Module, Result, Tensor};
use crosstrain_rng::SeededRng;
use rayon::prelude::*;

use crate::kernels::simd;

/// Mask values drawn per parallel task.
const MASK_VALUES_PER_TASK: usize = 1 << 16;

/// The random stream of a model's dropout layers; `None` inside means eval mode.
#[derive(Debug, Clone, Default)]
pub struct DropoutRng(Arc<Mutex<Option<SeededRng>>>);

impl DropoutRng {
    fn lock(&self) -> MutexGuard<'_, Option<SeededRng>> {
        // A poisoned lock only means another thread panicked mid-mask; the state is a u64.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Training mode, with masks drawn from `seed`.
    pub fn train(&self, seed: u64) {
        *self.lock() = Some(SeededRng::new(seed));
    }

    /// Eval mode: dropout is the identity.
    pub fn eval(&self) {
        *self.lock() = None;
    }

    /// Whether dropout is active.
    pub fn is_training(&self) -> bool {
        self.lock().is_some()
    }

    /// The stream's position (`None` in eval mode), to replay masks with [`Self::restore`].
    pub fn snapshot(&self) -> Option<u64> {
        self.lock().as_ref().map(SeededRng::state)
    }

    /// Goes back to a position taken with [`Self::snapshot`].
    pub fn restore(&self, snapshot: Option<u64>) {
        *self.lock() = snapshot.map(SeededRng::new);
    }

    /// `count` keep-mask values (0 or 1/(1 − p)), or `None` in eval mode. The stream's
    /// draws are the same as one after the other; they are taken in parallel pieces.
    fn scaled_mask_values(&self, count: usize, p: f64) -> Option<Vec<f32>> {
        let start = {
            let mut guard = self.lock();
            let rng = guard.as_mut()?;
            let start = rng.state();
            rng.skip(count as u64);
            start
        };
        let scale = (1.0 / (1.0 - p)) as f32;
        // 24 random bits per element are plenty for a keep/drop decision.
        let threshold = (p * f64::from(1u32 << 24)) as u64;
        let mut values = vec![0f32; count];
        values
            .par_chunks_mut(MASK_VALUES_PER_TASK)
            .enumerate()
            .for_each(|(task, piece)| {
                let first_draw = (task * MASK_VALUES_PER_TASK) as u64;
                simd::dropout_mask(piece, start, first_draw, threshold, scale);
            });
        Some(values)
    }

    /// A keep-mask scaled by 1/(1 − p), or `None` in eval mode. Drawn on the CPU and moved
    /// to the tensor's device, so every backend gets the same masks for the same seed.
    fn scaled_mask(&self, like: &Tensor, p: f64) -> Result<Option<Tensor>> {
        let Some(values) = self.scaled_mask_values(like.elem_count(), p) else {
            return Ok(None);
        };
        Tensor::from_vec(values, like.shape(), like.device())?
            .to_dtype(like.dtype())
            .map(Some)
    }
}

/// Inverted dropout with probability `p`.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f64,
    rng: DropoutRng,
}

impl Dropout {
    /// A dropout layer drawing from the model's shared stream.
    pub fn new(p: f64, rng: DropoutRng) -> Self {
        Self { p, rng }
    }
}

impl Dropout {
    /// Whether the layer is the identity whatever the mode (p = 0).
    pub fn is_identity(&self) -> bool {
        self.p == 0.0
    }

    /// The mask values this layer would apply to a tensor of `count` elements (drawing them
    /// from the stream exactly as [`Module::forward`] does), or `None` where it would be the
    /// identity (eval mode, or p = 0). For fused kernels that apply dropout themselves.
    pub fn mask_values(&self, count: usize) -> Option<Vec<f32>> {
        if self.is_identity() {
            return None;
        }
        self.rng.scaled_mask_values(count, self.p)
    }
}

impl Module for Dropout {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.is_identity() {
            return Ok(xs.clone());
        }
        match self.rng.scaled_mask(xs, self.p)? {
            Some(mask) => crate::kernels::ops::mul_by_constant(xs, &mask),
            None => Ok(xs.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn parallel_masks_are_the_sequential_stream() {
        let rng = DropoutRng::default();
        rng.train(11);
        let count = 3 * MASK_VALUES_PER_TASK + 123;
        let values = rng.scaled_mask_values(count, 0.25).unwrap();
        let mut sequential = SeededRng::new(11);
        let threshold = (0.25 * f64::from(1u32 << 24)) as u64;
        let expected: Vec<f32> = (0..count)
            .map(|_| {
                if (sequential.next_u64() >> 40) >= threshold {
                    (1.0 / 0.75) as f32
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(values, expected);
        // The shared stream continues after the last value drawn.
        assert_eq!(rng.snapshot(), Some(sequential.state()));
    }

    #[test]
    fn drops_only_in_training_and_replays_from_a_snapshot() {
        let rng = DropoutRng::default();
        let dropout = Dropout::new(0.5, rng.clone());
        let xs = Tensor::ones((4, 1000), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            dropout
                .forward(&xs)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            4000.0
        );
        rng.train(7);
        let snapshot = rng.snapshot();
        let first = dropout.forward(&xs).unwrap();
        let values: Vec<f32> = first.flatten_all().unwrap().to_vec1().unwrap();
        let dropped = values.iter().filter(|&&v| v == 0.0).count();
        assert!((1800..2200).contains(&dropped), "{dropped} of 4000 dropped");
        assert!(values.iter().all(|&v| v == 0.0 || v == 2.0));
        let second = dropout.forward(&xs).unwrap();
        assert_ne!(
            values,
            second.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        rng.restore(snapshot);
        let replayed = dropout.forward(&xs).unwrap();
        assert_eq!(
            values,
            replayed.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
