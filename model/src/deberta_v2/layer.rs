//! A DeBERTa-v2 layer: disentangled attention with its post-norm output, then BERT's
//! feed-forward block (`intermediate` and `output` have BERT's shape and names). On the CPU
//! in f32 (exact GELU, the table through the content projections) it runs as BERT's fused
//! layer with the relative terms ([`crate::kernels::encoder_layer::relative_encoder_layer`]);
//! elsewhere as the composite candle ops, which the tests hold the fused op to.

use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{AttentionInputs, DisentangledAttention};
use super::config::DebertaV2Config;
use crate::bert::feed_forward::{BertFeedForward, FeedForwardShape};
use crate::bert::HiddenAct;
use crate::dropout::DropoutRng;
use crate::kernels::encoder_layer::{
    self as fused_layer, LayerDims, LayerDropoutMasks, RelativeAttention,
};

/// `DebertaV2Layer`.
#[derive(Debug, Clone)]
pub struct DebertaV2Layer {
    attention: DisentangledAttention,
    feed_forward: BertFeedForward,
    dims: LayerDims,
}

impl DebertaV2Layer {
    /// Loads `encoder.layer.N`.
    pub fn load(vb: VarBuilder, config: &DebertaV2Config, rng: &DropoutRng) -> Result<Self> {
        Ok(Self {
            attention: DisentangledAttention::load(vb.pp("attention"), config, rng)?,
            feed_forward: BertFeedForward::load_with(
                vb,
                FeedForwardShape {
                    hidden: config.hidden_size,
                    intermediate: config.intermediate_size,
                    activation: config.hidden_act,
                    layer_norm_eps: config.layer_norm_eps,
                    dropout: config.hidden_dropout_prob,
                },
                config.lora.as_ref(),
                rng,
            )?,
            dims: LayerDims {
                hidden: config.hidden_size,
                intermediate: config.intermediate_size,
                heads: config.num_attention_heads,
                eps: config.layer_norm_eps as f32,
            },
        })
    }

    /// `hidden` `[b, s, h]` with the batch's attention inputs. With `first_token_only`,
    /// only each sequence's first row is needed (the fused op computes only it).
    pub fn forward(
        &self,
        hidden: &Tensor,
        inputs: &AttentionInputs,
        first_token_only: bool,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("deberta_layer").entered();
        let fused = hidden.device().is_cpu()
            && hidden.dtype() == DType::F32
            && self.feed_forward.activation == HiddenAct::Gelu
            && self.attention.shares_projections()
            && self.attention.head_size * self.attention.num_heads == self.dims.hidden
            && !self.attention.is_adapted()
            && !self.feed_forward.is_adapted();
        if fused {
            self.forward_fused(hidden, inputs, first_token_only)
        } else {
            self.forward_composite(hidden, inputs)
        }
    }

    /// The layer from candle ops.
    pub fn forward_composite(&self, hidden: &Tensor, inputs: &AttentionInputs) -> Result<Tensor> {
        let attended = self.attention.forward(hidden, inputs)?;
        self.feed_forward.forward(&attended)
    }

    /// The layer as one fused CPU op.
    pub fn forward_fused(
        &self,
        hidden: &Tensor,
        inputs: &AttentionInputs,
        first_token_only: bool,
    ) -> Result<Tensor> {
        let attention = &self.attention;
        let feed_forward = &self.feed_forward;
        let mut packed = feed_forward.pack_layer(
            [
                &attention.query,
                &attention.key,
                &attention.value,
                &attention.output,
            ],
            &attention.layer_norm,
        )?;
        let (batch, seq, width) = hidden.dims3()?;
        let table_rows = match &inputs.table {
            Some(table) => {
                packed = Tensor::cat(&[&packed, &table.flatten_all()?], 0)?;
                table.dim(0)?
            }
            None => 0,
        };
        // Drawn in the composite layer's order, so both paths see the same masks.
        let table_dropout = if table_rows > 0 {
            attention.position_dropout.mask_values(table_rows * width)
        } else {
            None
        };
        let dropout = LayerDropoutMasks {
            attention_probs: attention
                .probabilities_dropout
                .mask_values(batch * self.dims.heads * seq * seq),
            attention_output: attention.output_dropout.mask_values(batch * seq * width),
            feed_forward_output: feed_forward.dropout.mask_values(batch * seq * width),
        };
        let relative = RelativeAttention {
            rows: Arc::clone(&inputs.rows),
            table_rows,
            content_to_position: table_rows > 0 && attention.content_to_position,
            position_to_content: table_rows > 0 && attention.position_to_content,
            scale: (1.0 / attention.scale) as f32,
            table_dropout,
        };
        let keep_activations = hidden.track_op() || packed.track_op();
        fused_layer::relative_encoder_layer(
            hidden,
            &inputs.padding,
            &packed,
            self.dims,
            dropout,
            relative,
            keep_activations,
            first_token_only,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deberta_v2::relative_position::RelativePositions;
    use crate::test_support::{masked_output_and_gradients, max_abs, max_diff, random};
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    fn config(dropout: f64, attention_types: &str) -> DebertaV2Config {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 4, "intermediate_size": 48,
            "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout,
            "relative_attention": !attention_types.is_empty(), "pos_att_type": attention_types,
            "position_buckets": 4, "max_relative_positions": 16, "share_att_key": true,
            "position_biased_input": false
        }))
        .unwrap()
    }

    /// A layer with random weights, a random relative table (a variable, so its gradient is
    /// compared too), random inputs and a padding mask with a different length per element.
    struct Setup {
        layer: DebertaV2Layer,
        varmap: VarMap,
        hidden: Var,
        table: Var,
        inputs: AttentionInputs,
        real: Tensor,
        rng: DropoutRng,
    }

    fn setup(dropout: f64, attention_types: &str, first_token_only: bool) -> Setup {
        let config = config(dropout, attention_types);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let rng = DropoutRng::default();
        let layer = DebertaV2Layer::load(vb, &config, &rng).unwrap();
        for (n, (name, var)) in varmap.data().lock().unwrap().iter().enumerate() {
            let shape = var.as_tensor().dims().to_vec();
            let values = if name.ends_with("LayerNorm.weight") {
                (random(&shape, 100 + n as u64, 0.3) + 1.0).unwrap()
            } else {
                random(&shape, 100 + n as u64, 0.3)
            };
            var.set(&values).unwrap();
        }
        let (batch, seq) = (3, 11);
        let hidden = Var::from_tensor(&random(&[batch, seq, 32], 1, 2.0)).unwrap();
        let positions = RelativePositions {
            span: config.attention_span(),
            buckets: Some(4),
            max_position: 16,
        };
        let table = Var::from_tensor(&random(&[2 * positions.span, 32], 3, 1.0)).unwrap();
        let mut padding = vec![0f32; batch * seq];
        let mut real = vec![1f32; batch * seq];
        for (b, valid) in [11usize, 6, 1].iter().enumerate() {
            for k in *valid..seq {
                padding[b * seq + k] = f32::MIN;
                real[b * seq + k] = 0.0;
            }
            if first_token_only {
                for k in 1..seq {
                    real[b * seq + k] = 0.0;
                }
            }
        }
        let padding = Tensor::from_vec(padding, (batch, 1, 1, seq), &Device::Cpu).unwrap();
        let inputs = AttentionInputs::new(
            padding,
            4,
            config.relative_attention.then(|| table.as_tensor().clone()),
            positions.rows(seq).into(),
        );
        let real = Tensor::from_vec(real, (batch, seq, 1), &Device::Cpu).unwrap();
        Setup {
            layer,
            varmap,
            hidden,
            table,
            inputs,
            real,
            rng,
        }
    }

    fn run(
        path: impl Fn(&Tensor) -> Result<Tensor>,
        setup: &Setup,
    ) -> (Tensor, Vec<(String, Option<Tensor>)>) {
        let (output, grads) =
            masked_output_and_gradients(path(setup.hidden.as_tensor()).unwrap(), &setup.real);
        let mut named = vec![
            (
                "hidden".to_string(),
                grads.get(setup.hidden.as_tensor()).cloned(),
            ),
            (
                "relative table".to_string(),
                grads.get(setup.table.as_tensor()).cloned(),
            ),
        ];
        for (name, var) in setup.varmap.data().lock().unwrap().iter() {
            named.push((name.clone(), grads.get(var.as_tensor()).cloned()));
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        (output, named)
    }

    fn compare(dropout: f64, attention_types: &str, first_token_only: bool) {
        let setup = setup(dropout, attention_types, first_token_only);
        if dropout > 0.0 {
            setup.rng.train(42);
        }
        let snapshot = setup.rng.snapshot();
        let layer = &setup.layer;
        let (fused, fused_grads) = run(
            |h| layer.forward_fused(h, &setup.inputs, first_token_only),
            &setup,
        );
        setup.rng.restore(snapshot);
        let (composite, composite_grads) =
            run(|h| layer.forward_composite(h, &setup.inputs), &setup);
        let what =
            format!("{attention_types:?}, dropout {dropout}, first token {first_token_only}");
        let diff = max_diff(&fused, &composite);
        assert!(diff < 2e-5, "{what}: outputs differ by {diff}");
        assert_eq!(
            fused_grads.len(),
            18,
            "{what}: hidden, table and 16 parameters"
        );
        for ((name, a), (_, b)) in fused_grads.iter().zip(&composite_grads) {
            match (a, b) {
                (Some(a), Some(b)) => {
                    let diff = max_diff(a, b);
                    let scale = max_abs(b).max(1.0);
                    assert!(
                        diff / scale < 1e-4,
                        "{what}: gradient of {name} differs by {diff} (largest {scale})"
                    );
                    assert!(max_abs(b) > 0.0, "{what}: gradient of {name} is zero");
                }
                // Only the table, and only without relative attention, has none.
                (None, None) => assert!(
                    name == "relative table" && attention_types.is_empty(),
                    "{what}: no gradient for {name}"
                ),
                _ => panic!("{what}: {name} has a gradient on one path only"),
            }
        }
    }

    /// Both relative terms, one, and none, over log-bucketed distances (4 buckets over 16
    /// positions, so distances past 2 share rows), on padded batches.
    #[test]
    fn fused_layer_equals_the_composite_layer() {
        for attention_types in ["p2c|c2p", "c2p", "p2c", ""] {
            compare(0.0, attention_types, false);
        }
    }

    #[test]
    fn fused_layer_equals_the_composite_layer_with_dropout() {
        compare(0.3, "p2c|c2p", false);
        compare(0.3, "", false);
    }

    #[test]
    fn first_token_layer_equals_the_composite_layer_at_the_first_token() {
        compare(0.0, "p2c|c2p", true);
        compare(0.3, "p2c|c2p", true);
    }
}
