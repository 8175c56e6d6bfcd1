//! Rotary embeddings on packed rows, forward and transposed (for the backward pass): each
//! head's dimensions `i` and `i + d/2` rotated by the row's position times the frequency.

use rayon::prelude::*;

use super::{LayerPlan, ModernLayerOp, RotaryTables};

impl ModernLayerOp {
    /// Positions of the packed query rows (`queries`) or of all real rows.
    fn row_positions(plan: &LayerPlan, queries: bool) -> Vec<usize> {
        if queries {
            plan.packing.query_positions().map(|(_, j)| j).collect()
        } else {
            plan.packing.real_positions().map(|(_, j)| j).collect()
        }
    }
}

/// Rotates the first `hidden` columns of every `row_width`-wide row of `rows` (queries, or
/// the keys before the values), by each row's position; `transposed` applies the transposed
/// rotation, which carries a gradient of the rotated values back to the unrotated ones.
pub(super) fn rotate(
    op: &ModernLayerOp,
    plan: &LayerPlan,
    rows: &mut [f32],
    row_width: usize,
    queries: bool,
    transposed: bool,
) {
    let positions = ModernLayerOp::row_positions(plan, queries);
    rotate_rows(
        &op.rotary,
        rows,
        row_width,
        op.dims.hidden,
        &positions,
        transposed,
    );
}

/// Rotates the first `rotated_width` columns (whole heads of the tables' width) of every
/// `row_width`-wide row of `rows` by the position in `positions` (one per row), as
/// transformers' `x · cos + rotate_half(x) · sin`; `transposed` applies the transposed
/// rotation (the backward pass).
pub(crate) fn rotate_rows(
    tables: &RotaryTables,
    rows: &mut [f32],
    row_width: usize,
    rotated_width: usize,
    positions: &[usize],
    transposed: bool,
) {
    let head = tables.head_size;
    let half = head / 2;
    rows.par_chunks_mut(row_width)
        .zip(positions.par_iter())
        .for_each(|(row, &position)| {
            let cos = &tables.cos[position * head..(position + 1) * head];
            let sin = &tables.sin[position * head..(position + 1) * head];
            for values in row[..rotated_width].chunks_mut(head) {
                let (first, second) = values.split_at_mut(half);
                for i in 0..half {
                    let (x1, x2) = (first[i], second[i]);
                    if transposed {
                        first[i] = x1 * cos[i] + x2 * sin[half + i];
                        second[i] = x2 * cos[half + i] - x1 * sin[i];
                    } else {
                        // As the composite `x · cos + rotate_half(x) · sin`.
                        first[i] = x1 * cos[i] + -x2 * sin[i];
                        second[i] = x2 * cos[half + i] + x1 * sin[half + i];
                    }
                }
            }
        });
}
