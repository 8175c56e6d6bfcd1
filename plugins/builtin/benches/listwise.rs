//! `compute` of the listwise losses on 64 queries × 32 documents: it must be negligible next
//! to a model step (well under 1 ms). Run with `cargo bench -p crosstrain-losses`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use crosstrain_losses::{
    ADRMSELoss, LambdaLoss, ListMLELoss, ListNetLoss, PListMLELoss, RankNetLoss,
};
use crosstrain_plugin_api::{build_loss, BatchShape, Labels, LossPlugin};

const QUERIES: usize = 64;
const DOCUMENTS: usize = 32;

/// Deterministic logits and graded labels 0..3.
fn batch() -> (BatchShape, Vec<f32>, Labels) {
    let shape = BatchShape::query_documents(vec![DOCUMENTS as u32; QUERIES]);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let logits: Vec<f32> = (0..QUERIES * DOCUMENTS)
        .map(|_| (next() * 6.0 - 3.0) as f32)
        .collect();
    let labels: Vec<Vec<f32>> = (0..QUERIES)
        .map(|_| {
            (0..DOCUMENTS)
                .map(|_| (next() * 4.0).floor() as f32)
                .collect()
        })
        .collect();
    (shape, logits, Labels::per_row_lists(&labels))
}

fn bench_loss<L: LossPlugin>(c: &mut Criterion) {
    let (shape, logits, labels) = batch();
    let loss = build_loss::<L>("{}").expect("default config builds");
    let plan = loss.plan(&shape, 0).expect("plan");
    c.bench_function(&format!("{} compute 64x32", L::NAME), |b| {
        b.iter(|| loss.compute(black_box(&plan), black_box(&logits), 1, black_box(&labels)))
    });
}

fn listwise(c: &mut Criterion) {
    bench_loss::<LambdaLoss>(c);
    bench_loss::<RankNetLoss>(c);
    bench_loss::<ListNetLoss>(c);
    bench_loss::<PListMLELoss>(c);
    bench_loss::<ListMLELoss>(c);
    bench_loss::<ADRMSELoss>(c);
}

criterion_group!(benches, listwise);
criterion_main!(benches);
