//! One transformer encoder layer: attention block, then feed-forward block.

use candle_core::{DType, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use super::attention::BertAttention;
use super::config::{BertConfig, HiddenAct};
use super::feed_forward::BertFeedForward;
use crate::dropout::DropoutRng;
use crate::kernels::encoder_layer::{self as fused_layer, LayerDims, LayerDropoutMasks};
use crate::layer_norm::LayerNorm;
use crate::lora::LoraLinear;
use crate::parameters::{packed_views, PackedLayer};

/// `BertLayer`.
#[derive(Debug, Clone)]
pub struct BertLayer {
    attention: BertAttention,
    feed_forward: BertFeedForward,
    dims: LayerDims,
    /// The layer's parameters as one vector, when they are kept packed (see
    /// [`crate::parameters`]); the modules above are then views of it.
    packed: Option<Tensor>,
}

impl BertLayer {
    /// Loads `encoder.layer.{i}.*`.
    pub fn load(vb: VarBuilder, config: &BertConfig, rng: &DropoutRng) -> Result<Self> {
        Ok(Self {
            attention: BertAttention::load(vb.pp("attention"), config, rng)?,
            feed_forward: BertFeedForward::load(vb, config, rng)?,
            dims: LayerDims {
                hidden: config.hidden_size,
                intermediate: config.intermediate_size,
                heads: config.num_attention_heads,
                eps: config.layer_norm_eps as f32,
            },
            packed: None,
        })
    }

    /// The projections of the attention block in the fused op's order.
    fn projections(&self) -> [&LoraLinear; 4] {
        let self_attention = &self.attention.self_attention;
        [
            &self_attention.query,
            &self_attention.key,
            &self_attention.value,
            &self.attention.dense,
        ]
    }

    /// Whether the fused kernel runs this layer: f32 on the CPU with exact GELU, and no
    /// adapter in it (an adapter with LoRA dropout runs on candle's ops, see
    /// [`LoraLinear::load_stored`]).
    fn is_fused_on(&self, device: &candle_core::Device, dtype: DType) -> bool {
        let adapted = self.projections().iter().any(|linear| linear.is_adapted())
            || self.feed_forward.is_adapted();
        device.is_cpu()
            && dtype == DType::F32
            && self.feed_forward.activation == HiddenAct::Gelu
            && !adapted
    }

    /// One layer: the fused CPU kernel where it applies (f32 on the CPU, exact GELU),
    /// otherwise the composite candle ops (CUDA, other dtypes and activations).
    pub fn forward(&self, hidden: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        self.forward_rows(hidden, mask_bias, false)
    }

    /// The layer where only each sequence's first token's output will be read (a
    /// cross-encoder's last layer): the fused kernel computes only those rows and leaves
    /// zeros elsewhere; the composite path computes everything.
    pub fn forward_first_token(&self, hidden: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        self.forward_rows(hidden, mask_bias, true)
    }

    fn forward_rows(
        &self,
        hidden: &Tensor,
        mask_bias: &Tensor,
        first_token_only: bool,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("encoder_layer").entered();
        let fused =
            self.is_fused_on(hidden.device(), hidden.dtype()) && mask_bias.dtype() == DType::F32;
        if fused {
            self.forward_fused(hidden, mask_bias, first_token_only)
        } else {
            self.forward_composite(hidden, mask_bias)
        }
    }

    /// The layer from candle ops, one module per sub-block.
    pub fn forward_composite(&self, hidden: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let attended = self.attention.forward(hidden, mask_bias)?;
        self.feed_forward.forward(&attended)
    }

    /// The layer as one fused CPU op ([`fused_layer::encoder_layer`]), for every token or
    /// only each sequence's first.
    pub fn forward_fused(
        &self,
        hidden: &Tensor,
        mask_bias: &Tensor,
        first_token_only: bool,
    ) -> Result<Tensor> {
        let attention = &self.attention;
        let self_attention = &attention.self_attention;
        let feed_forward = &self.feed_forward;
        let packed = match &self.packed {
            Some(packed) => packed.clone(),
            None => feed_forward.pack_layer(self.projections(), &attention.layer_norm)?,
        };
        let (batch, seq, width) = hidden.dims3()?;
        // Drawn in the composite layer's order, so both paths see the same masks.
        let dropout = LayerDropoutMasks {
            attention_probs: self_attention
                .dropout
                .mask_values(batch * self.dims.heads * seq * seq),
            attention_output: attention.dropout.mask_values(batch * seq * width),
            feed_forward_output: feed_forward.dropout.mask_values(batch * seq * width),
        };
        let keep_activations = hidden.track_op() || packed.track_op();
        fused_layer::encoder_layer(
            hidden,
            mask_bias,
            &packed,
            self.dims,
            dropout,
            keep_activations,
            first_token_only,
        )
    }
}

impl PackedLayer for BertLayer {
    fn runs_fused(&self) -> bool {
        let weight = self.feed_forward.intermediate.weight();
        self.is_fused_on(weight.device(), weight.dtype())
    }

    fn packing_order(&self) -> Vec<Tensor> {
        self.feed_forward
            .layer_parameters(self.projections(), &self.attention.layer_norm)
            .map(|parameters| parameters.in_packing_order().into_iter().cloned().collect())
            .unwrap_or_default()
    }

    fn use_packed(&mut self, packed: Tensor) -> Result<()> {
        let shapes: Vec<Shape> = self
            .packing_order()
            .iter()
            .map(|tensor| tensor.shape().clone())
            .collect();
        let views: [Tensor; 16] = packed_views(&packed, &shapes)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("encoder layer: not 16 parameters".into()))?;
        let [qw, kw, vw, qb, kb, vb, ow, ob, n1w, n1b, iw, ib, fw, fb, n2w, n2b] = views;
        let attention = &mut self.attention;
        attention.self_attention.query = LoraLinear::new(qw, Some(qb));
        attention.self_attention.key = LoraLinear::new(kw, Some(kb));
        attention.self_attention.value = LoraLinear::new(vw, Some(vb));
        attention.dense = LoraLinear::new(ow, Some(ob));
        attention.layer_norm = LayerNorm::new(n1w, n1b, attention.layer_norm.eps());
        let feed_forward = &mut self.feed_forward;
        feed_forward.intermediate = LoraLinear::new(iw, Some(ib));
        feed_forward.output = LoraLinear::new(fw, Some(fb));
        feed_forward.layer_norm = LayerNorm::new(n2w, n2b, feed_forward.layer_norm.eps());
        self.packed = Some(packed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{masked_output_and_gradients, max_abs, max_diff, random};
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    fn config(dropout: f64) -> BertConfig {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
            "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout,
            "layer_norm_eps": 1e-12
        }))
        .unwrap()
    }

    /// A layer with random weights (LayerNorm scales near 1), random inputs and a padding
    /// mask with different lengths per batch element.
    fn setup(
        dropout: f64,
        first_token_only: bool,
    ) -> (BertLayer, VarMap, Var, Tensor, Tensor, DropoutRng) {
        let config = config(dropout);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let rng = DropoutRng::default();
        let layer = BertLayer::load(vb, &config, &rng).unwrap();
        // Non-trivial LayerNorm parameters and biases, so their gradients are tested too.
        for (index, (name, var)) in varmap.data().lock().unwrap().iter().enumerate() {
            let shape = var.as_tensor().dims().to_vec();
            let values = if name.ends_with("LayerNorm.weight") {
                (random(&shape, 100 + index as u64, 0.3) + 1.0).unwrap()
            } else {
                random(&shape, 100 + index as u64, 0.3)
            };
            var.set(&values).unwrap();
        }
        let (batch, seq) = (3, 11);
        let hidden = Var::from_tensor(&random(&[batch, seq, 32], 1, 2.0)).unwrap();
        let mut mask = vec![0f32; batch * seq];
        let mut real = vec![1f32; batch * seq];
        for (b, valid) in [11usize, 6, 1].iter().enumerate() {
            for k in *valid..seq {
                mask[b * seq + k] = f32::MIN;
                real[b * seq + k] = 0.0;
            }
            if first_token_only {
                // Only the first token's output is compared (and gets a gradient).
                for k in 1..seq {
                    real[b * seq + k] = 0.0;
                }
            }
        }
        let mask = Tensor::from_vec(mask, (batch, 1, 1, seq), &Device::Cpu).unwrap();
        let real = Tensor::from_vec(real, (batch, seq, 1), &Device::Cpu).unwrap();
        (layer, varmap, hidden, mask, real, rng)
    }

    /// Output at the real tokens and gradients (of Σ output · upstream, the upstream
    /// gradient being zero at padded positions as it is in the model) of one path, the
    /// parameters' gradients read from the store by `parameter_grads`.
    fn run_with(
        path: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
        parameter_grads: impl Fn(&candle_core::backprop::GradStore) -> Vec<(String, Tensor)>,
        hidden: &Var,
        mask: &Tensor,
        real: &Tensor,
    ) -> (Tensor, Vec<(String, Tensor)>) {
        let (output, grads) =
            masked_output_and_gradients(path(hidden.as_tensor(), mask).unwrap(), real);
        let mut named = vec![(
            "hidden".to_string(),
            grads.get(hidden.as_tensor()).unwrap().clone(),
        )];
        named.extend(parameter_grads(&grads));
        named.sort_by(|a, b| a.0.cmp(&b.0));
        (output, named)
    }

    /// [`run_with`] on a layer whose parameters are the separate `Var`s of `varmap`.
    fn run(
        path: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
        varmap: &VarMap,
        hidden: &Var,
        mask: &Tensor,
        real: &Tensor,
    ) -> (Tensor, Vec<(String, Tensor)>) {
        let parameter_grads = |grads: &candle_core::backprop::GradStore| {
            let vars = varmap.data().lock().unwrap();
            vars.iter()
                .map(|(name, var)| {
                    let grad = grads
                        .get(var.as_tensor())
                        .unwrap_or_else(|| panic!("no gradient for {name}"));
                    (name.clone(), grad.clone())
                })
                .collect()
        };
        run_with(path, parameter_grads, hidden, mask, real)
    }

    fn compare(dropout: f64, first_token_only: bool) {
        let (layer, varmap, hidden, mask, real, rng) = setup(dropout, first_token_only);
        if dropout > 0.0 {
            rng.train(42);
        }
        let snapshot = rng.snapshot();
        let (fused, fused_grads) = run(
            |h, m| layer.forward_fused(h, m, first_token_only),
            &varmap,
            &hidden,
            &mask,
            &real,
        );
        rng.restore(snapshot);
        let (composite, composite_grads) = run(
            |h, m| layer.forward_composite(h, m),
            &varmap,
            &hidden,
            &mask,
            &real,
        );
        let diff = max_diff(&fused, &composite);
        assert!(diff < 2e-5, "outputs differ by {diff}");
        assert_eq!(fused_grads.len(), 17, "hidden plus 16 parameters");
        for ((name, a), (_, b)) in fused_grads.iter().zip(&composite_grads) {
            let diff = max_diff(a, b);
            let scale = max_abs(b).max(1.0);
            assert!(
                diff / scale < 1e-4,
                "gradient of {name} differs by {diff} (largest {scale})"
            );
            assert!(max_abs(b) > 0.0, "gradient of {name} is zero");
        }
    }

    #[test]
    fn fused_layer_equals_the_composite_layer() {
        compare(0.0, false);
    }

    /// [`run_with`] on a layer whose parameters were moved into one packed `Var` (as a
    /// loaded model's are): each parameter's gradient is its slice of the `Var`'s.
    fn run_packed(
        path: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
        packed: &crate::parameters::Trainable,
        hidden: &Var,
        mask: &Tensor,
        real: &Tensor,
    ) -> (Tensor, Vec<(String, Tensor)>) {
        let parameter_grads = |grads: &candle_core::backprop::GradStore| {
            let whole = grads.get(packed.var.as_tensor()).unwrap();
            packed
                .parts
                .iter()
                .map(|part| (part.name.clone(), part.slice_of(whole).unwrap()))
                .collect()
        };
        run_with(path, parameter_grads, hidden, mask, real)
    }

    /// Packing a layer's parameters into one `Var` changes no number: the fused op gives
    /// the same output and (sliced) gradients as on the separate tensors, the composite path
    /// over the views too, and a value set through the packed `Var` reaches both paths.
    #[test]
    fn a_packed_layer_equals_the_unpacked_layer() {
        let (layer, varmap, hidden, mask, real, _rng) = setup(0.0, false);
        let mut names_by_id: std::collections::HashMap<_, _> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(name, var)| (var.as_tensor().id(), name.clone()))
            .collect();
        let mut packed_layer = layer.clone();
        let packed =
            crate::parameters::pack_layers(vec![&mut packed_layer], &mut names_by_id).unwrap();
        assert_eq!(packed.len(), 1);
        assert!(
            names_by_id.is_empty(),
            "every parameter is in the packed Var"
        );
        let packed = &packed[0];
        assert_eq!(packed.parts.len(), 16);
        for (fused, path) in [(true, "fused"), (false, "composite")] {
            let forward = |layer: &BertLayer, h: &Tensor, m: &Tensor| {
                if fused {
                    layer.forward_fused(h, m, false)
                } else {
                    layer.forward_composite(h, m)
                }
            };
            let (expected, expected_grads) =
                run(|h, m| forward(&layer, h, m), &varmap, &hidden, &mask, &real);
            let (output, grads) = run_packed(
                |h, m| forward(&packed_layer, h, m),
                packed,
                &hidden,
                &mask,
                &real,
            );
            assert_eq!(max_diff(&output, &expected), 0.0, "{path} output");
            assert_eq!(grads.len(), expected_grads.len());
            for ((name, a), (other, b)) in grads.iter().zip(&expected_grads) {
                assert_eq!(name, other);
                assert_eq!(max_diff(a, b), 0.0, "{path} gradient of {name}");
            }
        }
        // A new value set through the packed `Var` is what both paths read.
        let part = packed
            .parts
            .iter()
            .find(|part| part.name.ends_with("intermediate.dense.weight"))
            .unwrap();
        let changed = random(part.shape.dims(), 99, 0.3);
        packed.set(part, &changed).unwrap();
        varmap.data().lock().unwrap()[&part.name]
            .set(&changed)
            .unwrap();
        let detached = hidden.as_tensor().detach();
        let at_real = |output: Tensor| output.broadcast_mul(&real).unwrap();
        let expected = at_real(layer.forward_fused(&detached, &mask, false).unwrap());
        let packed_fused = at_real(packed_layer.forward_fused(&detached, &mask, false).unwrap());
        assert_eq!(
            max_diff(&packed_fused, &expected),
            0.0,
            "fused, after the change"
        );
        let composite = at_real(packed_layer.forward_composite(&detached, &mask).unwrap());
        assert!(
            max_diff(&composite, &expected) < 2e-5,
            "composite, after the change"
        );
        assert_eq!(max_diff(&packed.value(part).unwrap(), &changed), 0.0);
    }

    #[test]
    fn fused_layer_equals_the_composite_layer_with_dropout() {
        compare(0.3, false);
    }

    #[test]
    fn first_token_layer_equals_the_composite_layer_at_the_first_token() {
        compare(0.0, true);
        compare(0.3, true);
    }

    #[test]
    fn fused_layer_matches_in_inference_without_a_graph() {
        let (layer, _varmap, hidden, mask, real, _rng) = setup(0.1, false);
        let detached = hidden.as_tensor().detach();
        let fused = layer.forward_fused(&detached, &mask, false).unwrap();
        let composite = layer.forward_composite(&detached, &mask).unwrap();
        let at_real = |t: &Tensor| t.broadcast_mul(&real).unwrap();
        assert!(max_diff(&at_real(&fused), &at_real(&composite)) < 2e-5);
        // Padded positions come out as zeros.
        assert_eq!(max_abs(&(&fused - at_real(&fused)).unwrap()), 0.0);
    }
}
