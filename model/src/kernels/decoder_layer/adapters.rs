//! LoRA adapters inside the fused decoder layer: `y = x·Wᵀ (+ b) + s·(x·Aᵀ)·Bᵀ` on any of the
//! seven projections, with the frozen base taking no weight gradients. The adapters of a
//! layer are packed into one vector (the op's trainable input). The fused layer's adapters
//! have no dropout (a layer with LoRA dropout runs on candle's ops), so each pass runs on the
//! base with the updates merged in, `W + s·B·A` ([`FrozenBase::values`]), as an unadapted
//! layer runs: the merged weights give the outputs and the inputs' gradients, and only A's
//! and B's own gradients need the low-rank products (`x·Aᵀ` recomputed, not kept).

use candle_core::{DType, Result, Tensor};

use super::params::Offsets;
use super::DecoderLayerDims;
use crate::kernels::encoder_layer::products::{matmul, project, view};
use crate::kernels::encoder_layer::threads;
use crate::kernels::ops::with_cpu_values;

/// The seven projections of a decoder layer, in the order their adapters are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    /// `self_attn.q_proj`.
    Query,
    /// `self_attn.k_proj`.
    Key,
    /// `self_attn.v_proj`.
    Value,
    /// `self_attn.o_proj`.
    Output,
    /// `mlp.gate_proj`.
    Gate,
    /// `mlp.up_proj`.
    Up,
    /// `mlp.down_proj`.
    Down,
}

impl Projection {
    /// All seven, in packing order.
    pub const ALL: [Projection; 7] = [
        Projection::Query,
        Projection::Key,
        Projection::Value,
        Projection::Output,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    /// `(inputs, outputs)` of the projection.
    fn widths(self, dims: &DecoderLayerDims) -> (usize, usize) {
        let (h, i, q, k) = (
            dims.hidden,
            dims.intermediate,
            dims.query_width(),
            dims.kv_width(),
        );
        match self {
            Projection::Query => (h, q),
            Projection::Key | Projection::Value => (h, k),
            Projection::Output => (q, h),
            Projection::Gate | Projection::Up => (h, i),
            Projection::Down => (i, h),
        }
    }

    /// Where the weight of the projection's packed matrix starts in the layer's parameters
    /// (keys and values share one matrix, as do the gate and up projections; the
    /// projection's rows start [`Self::placement`]'s column further on).
    fn weight_start(self, offsets: &Offsets) -> usize {
        match self {
            Projection::Query => offsets.query.start,
            Projection::Key | Projection::Value => offsets.key_value.start,
            Projection::Output => offsets.output.start,
            Projection::Gate | Projection::Up => offsets.gate_up.start,
            Projection::Down => offsets.down.start,
        }
    }

    /// Where the projection's output lies in the kernel's buffers: `(row width, first
    /// column)` (keys and values share one buffer, as do the gate and up projections).
    fn placement(self, dims: &DecoderLayerDims) -> (usize, usize) {
        let (h, i, q, k) = (
            dims.hidden,
            dims.intermediate,
            dims.query_width(),
            dims.kv_width(),
        );
        match self {
            Projection::Query => (q, 0),
            Projection::Key => (2 * k, 0),
            Projection::Value => (2 * k, k),
            Projection::Output | Projection::Down => (h, 0),
            Projection::Gate => (2 * i, 0),
            Projection::Up => (2 * i, i),
        }
    }
}

/// A layer's adapters: one rank and scaling (PEFT's `r` and `lora_alpha / r`, or
/// `/ √r` with rsLoRA) for all, on the projections `targets` marks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdapterDims {
    /// `r`.
    pub rank: usize,
    /// The update's factor.
    pub scaling: f32,
    /// Which projections have an adapter, in [`Projection::ALL`]'s order.
    pub targets: [bool; 7],
}

impl AdapterDims {
    /// Where `A [r, in]` and `B [out, r]` of `projection` lie in the packed vector.
    fn ranges(
        &self,
        layer: &DecoderLayerDims,
        projection: Projection,
    ) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
        let mut next = 0;
        for (p, &present) in Projection::ALL.iter().zip(&self.targets) {
            if !present {
                continue;
            }
            let (inputs, outputs) = p.widths(layer);
            let a = next..next + self.rank * inputs;
            let b = a.end..a.end + outputs * self.rank;
            if *p == projection {
                return Some((a, b));
            }
            next = b.end;
        }
        None
    }

    /// Values in the packed vector.
    pub fn total(&self, layer: &DecoderLayerDims) -> usize {
        Projection::ALL
            .iter()
            .zip(&self.targets)
            .filter(|(_, &present)| present)
            .map(|(p, _)| {
                let (inputs, outputs) = p.widths(layer);
                self.rank * (inputs + outputs)
            })
            .sum()
    }
}

/// The frozen base of an adapted layer: its parameter tensors in packing order, in
/// whatever dtype they are kept (bf16 is widened while the op runs, never stored wider).
pub(super) struct FrozenBase {
    pub(super) tensors: Vec<Tensor>,
    pub(super) adapters: AdapterDims,
}

impl FrozenBase {
    /// The base as one f32 vector with each adapter's update added to its projection's
    /// weight (`W + s·B·A`, in f32), for the length of one forward or backward pass: one copy
    /// of an f32 base (a bf16 one is widened tensor by tensor first), and one `B·A` product
    /// per adapted projection (`out·in·r` multiply-adds, fewer than the `rows·r·(in + out)`
    /// of applying the update to a batch's every token).
    pub(super) fn values(&self, layer: &DecoderLayerDims, adapters: &[f32]) -> Result<Vec<f32>> {
        let total = self.tensors.iter().map(Tensor::elem_count).sum();
        let mut values = Vec::with_capacity(total);
        for tensor in &self.tensors {
            let wide = tensor.to_dtype(DType::F32)?.flatten_all()?.contiguous()?;
            with_cpu_values(&wide, "frozen base", |part| values.extend_from_slice(part))?;
        }
        let offsets = layer.offsets();
        let rank = self.adapters.rank;
        for projection in Projection::ALL {
            let Some((a, b)) = self.adapters.ranges(layer, projection) else {
                continue;
            };
            let (inputs, outputs) = projection.widths(layer);
            let (_, first_row) = projection.placement(layer);
            let start = projection.weight_start(&offsets) + first_row * inputs;
            let scaled_b: Vec<f32> = adapters[b]
                .iter()
                .map(|v| v * self.adapters.scaling)
                .collect();
            // W [out, in] += (s·B) [out, r] · A [r, in].
            matmul(
                &mut values[start..start + outputs * inputs],
                view(0, inputs, 1),
                &scaled_b,
                view(0, rank, 1),
                &adapters[a],
                view(0, inputs, 1),
                (outputs, inputs, rank),
                true,
                threads(),
            );
        }
        Ok(values)
    }
}

/// The adapter's part of a projection's backward pass: from the gradient `dy` of the
/// projection's output buffer and its input `x`, adds A's and B's gradients into
/// `d_adapters` (the input's gradient comes from the merged weight, with the base's).
pub(super) fn update_backward(
    layer: &DecoderLayerDims,
    adapters: Option<(&AdapterDims, &[f32])>,
    d_adapters: &mut [f32],
    projection: Projection,
    x: &[f32],
    rows: usize,
    dy: &[f32],
) {
    let Some((dims, values)) = adapters else {
        return;
    };
    let Some((a, b)) = dims.ranges(layer, projection) else {
        return;
    };
    let (inputs, outputs) = projection.widths(layer);
    let (row_width, column) = projection.placement(layer);
    let rank = dims.rank;
    // low = s·x·Aᵀ; dB += dyᵀ·low.
    let mut low = project(x, &values[a.clone()], rows, rank);
    low.iter_mut().for_each(|v| *v *= dims.scaling);
    matmul(
        &mut d_adapters[b.clone()],
        view(0, rank, 1),
        dy,
        view(column, 1, row_width),
        &low,
        view(0, rank, 1),
        (outputs, rank, rows),
        true,
        threads(),
    );
    // d_low = s·dy·B; dA += d_lowᵀ·x.
    let mut d_low = vec![0f32; rows * rank];
    matmul(
        &mut d_low,
        view(0, rank, 1),
        dy,
        view(column, row_width, 1),
        &values[b],
        view(0, rank, 1),
        (rows, rank, outputs),
        false,
        threads(),
    );
    d_low.iter_mut().for_each(|v| *v *= dims.scaling);
    matmul(
        &mut d_adapters[a],
        view(0, inputs, 1),
        &d_low,
        view(0, 1, rank),
        x,
        view(0, inputs, 1),
        (rank, inputs, rows),
        true,
        threads(),
    );
}
