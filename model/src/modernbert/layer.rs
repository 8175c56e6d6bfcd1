//! A pre-norm ModernBERT layer: `h + attn(norm(h))`, then `h + mlp(norm(h))`; layer 0 has no
//! attention norm (the embeddings' norm comes just before it). On the CPU in f32 the layer
//! runs as one fused op ([`crate::kernels::modernbert_layer`]); elsewhere (CUDA, other
//! dtypes) as the composite candle ops below, which the tests hold the fused op to.

use candle_core::{DType, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use super::attention::{AttentionInputs, ModernBertAttention};
use super::config::ModernBertConfig;
use super::mlp::ModernBertMlp;
use crate::dropout::DropoutRng;
use crate::kernels::modernbert_layer::{
    self as fused_layer, ModernLayerDims, ModernLayerDropoutMasks, ModernLayerParameters,
};
use crate::layer_norm::LayerNorm;
use crate::lora::LoraLinear;
use crate::parameters::{packed_views, PackedLayer};

/// `ModernBertEncoderLayer`.
#[derive(Debug, Clone)]
pub struct ModernBertLayer {
    attention_norm: Option<LayerNorm>,
    attention: ModernBertAttention,
    mlp_norm: LayerNorm,
    mlp: ModernBertMlp,
    dims: ModernLayerDims,
    /// The layer's parameters as one vector, when they are kept packed (see
    /// [`crate::parameters`]); the modules above are then views of it.
    packed: Option<Tensor>,
}

impl ModernBertLayer {
    /// Loads `layers.N`.
    pub fn load(
        vb: VarBuilder,
        config: &ModernBertConfig,
        layer: usize,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let (width, eps) = (config.hidden_size, config.norm_eps);
        Ok(Self {
            attention_norm: if layer == 0 {
                None
            } else {
                Some(LayerNorm::load_without_bias(
                    vb.pp("attn_norm"),
                    width,
                    eps,
                )?)
            },
            attention: ModernBertAttention::load(vb.pp("attn"), config, rng)?,
            mlp_norm: LayerNorm::load_without_bias(vb.pp("mlp_norm"), width, eps)?,
            mlp: ModernBertMlp::load(vb.pp("mlp"), config, rng)?,
            dims: ModernLayerDims {
                hidden: width,
                intermediate: config.intermediate_size,
                heads: config.num_attention_heads,
                eps: eps as f32,
                attention_norm: layer != 0,
                half_window: (!config.is_global(layer)).then_some(config.local_attention / 2),
            },
            packed: None,
        })
    }

    /// The parameters in the fused op's terms.
    fn parameters(&self) -> ModernLayerParameters<'_> {
        ModernLayerParameters {
            attention_norm: self.attention_norm.as_ref().map(LayerNorm::weight),
            qkv: self.attention.wqkv.weight(),
            attention_output: self.attention.wo.weight(),
            mlp_norm: self.mlp_norm.weight(),
            mlp_input: self.mlp.wi.weight(),
            mlp_output: self.mlp.wo.weight(),
        }
    }

    /// `hidden` `[b, s, h]`, with the attention inputs of the layer's kind: the fused op on
    /// f32 CPU tensors, else the composite ops. With `first_token_only`, only each
    /// sequence's first row is needed (the fused op computes only it, zeros elsewhere).
    pub fn forward(
        &self,
        hidden: &Tensor,
        attention: &AttentionInputs,
        first_token_only: bool,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("modernbert_layer").entered();
        if hidden.device().is_cpu() && hidden.dtype() == DType::F32 && !self.is_adapted() {
            self.forward_fused(hidden, attention, first_token_only)
        } else {
            self.forward_composite(hidden, attention)
        }
    }

    /// Whether a LoRA adapter is attached to any projection: the layer then runs on
    /// candle's ops (see [`LoraLinear::load_stored`]).
    fn is_adapted(&self) -> bool {
        [
            &self.attention.wqkv,
            &self.attention.wo,
            &self.mlp.wi,
            &self.mlp.wo,
        ]
        .into_iter()
        .any(LoraLinear::is_adapted)
    }

    /// The layer from candle ops.
    pub fn forward_composite(
        &self,
        hidden: &Tensor,
        attention: &AttentionInputs,
    ) -> Result<Tensor> {
        let normed = match &self.attention_norm {
            Some(norm) => norm.forward(hidden)?,
            None => hidden.clone(),
        };
        let hidden = (hidden + self.attention.forward(&normed, attention)?)?;
        let mlp = self.mlp.forward(&self.mlp_norm.forward(&hidden)?)?;
        hidden + mlp
    }

    /// The layer as one fused CPU op.
    pub fn forward_fused(
        &self,
        hidden: &Tensor,
        attention: &AttentionInputs,
        first_token_only: bool,
    ) -> Result<Tensor> {
        let packed = match &self.packed {
            Some(packed) => packed.clone(),
            None => fused_layer::pack_parameters(&self.parameters())?,
        };
        let (batch, seq, width) = hidden.dims3()?;
        // Drawn in the composite layer's order, so both paths see the same masks.
        let dropout = ModernLayerDropoutMasks {
            attention_probs: self
                .attention
                .probabilities_dropout
                .mask_values(batch * self.dims.heads * seq * seq),
            attention_output: self
                .attention
                .output_dropout
                .mask_values(batch * seq * width),
            mlp: self
                .mlp
                .dropout
                .mask_values(batch * seq * self.dims.intermediate),
        };
        let keep_activations = hidden.track_op() || packed.track_op();
        fused_layer::modernbert_layer(
            hidden,
            &attention.padding,
            &packed,
            self.dims,
            attention.tables.clone(),
            dropout,
            keep_activations,
            first_token_only,
        )
    }
}

impl PackedLayer for ModernBertLayer {
    fn runs_fused(&self) -> bool {
        let weight = self.attention.wqkv.weight();
        weight.device().is_cpu() && weight.dtype() == DType::F32
    }

    fn packing_order(&self) -> Vec<Tensor> {
        self.parameters()
            .in_packing_order()
            .into_iter()
            .cloned()
            .collect()
    }

    fn use_packed(&mut self, packed: Tensor) -> Result<()> {
        let shapes: Vec<Shape> = self
            .packing_order()
            .iter()
            .map(|tensor| tensor.shape().clone())
            .collect();
        let mut views = packed_views(&packed, &shapes)?.into_iter();
        let mut next = || {
            views.next().ok_or_else(|| {
                candle_core::Error::Msg("ModernBERT layer: a missing parameter".into())
            })
        };
        // A bias-free norm keeps its constant zero shift.
        if let Some(norm) = &mut self.attention_norm {
            *norm = LayerNorm::new(next()?, norm.bias().clone(), norm.eps());
        }
        self.attention.wqkv = LoraLinear::new(next()?, None);
        self.attention.wo = LoraLinear::new(next()?, None);
        let norm = &self.mlp_norm;
        self.mlp_norm = LayerNorm::new(next()?, norm.bias().clone(), norm.eps());
        self.mlp.wi = LoraLinear::new(next()?, None);
        self.mlp.wo = LoraLinear::new(next()?, None);
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

    fn config(dropout: f64) -> ModernBertConfig {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 3,
            "num_attention_heads": 4, "intermediate_size": 48,
            "global_attn_every_n_layers": 2, "local_attention": 6,
            "attention_dropout": dropout, "mlp_dropout": dropout,
            "global_rope_theta": 160000.0, "local_rope_theta": 10000.0
        }))
        .unwrap()
    }

    /// Layer `index` with random weights (norm scales near 1), random inputs, and a padding
    /// bias with different lengths per batch element; `real` is 1 at the rows compared.
    fn setup(
        index: usize,
        dropout: f64,
        first_token_only: bool,
    ) -> (
        ModernBertLayer,
        VarMap,
        Var,
        AttentionInputs,
        Tensor,
        DropoutRng,
    ) {
        let config = config(dropout);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let rng = DropoutRng::default();
        let layer = ModernBertLayer::load(vb, &config, index, &rng).unwrap();
        for (n, (name, var)) in varmap.data().lock().unwrap().iter().enumerate() {
            let shape = var.as_tensor().dims().to_vec();
            let values = if name.contains("norm") {
                (random(&shape, 100 + n as u64, 0.3) + 1.0).unwrap()
            } else {
                random(&shape, 100 + n as u64, 0.3)
            };
            var.set(&values).unwrap();
        }
        let (batch, seq) = (3, 13);
        let hidden = Var::from_tensor(&random(&[batch, seq, 32], 1, 2.0)).unwrap();
        let mut bias = vec![0f32; batch * seq];
        let mut real = vec![1f32; batch * seq];
        for (b, valid) in [13usize, 8, 1].iter().enumerate() {
            for k in *valid..seq {
                bias[b * seq + k] = super::super::attention::MASKED;
                real[b * seq + k] = 0.0;
            }
            if first_token_only {
                for k in 1..seq {
                    real[b * seq + k] = 0.0;
                }
            }
        }
        let bias = Tensor::from_vec(bias, (batch, 1, 1, seq), &Device::Cpu).unwrap();
        let half_window = layer.dims.half_window;
        let inputs = AttentionInputs::new(&bias, 8, config.rope_theta(index), half_window).unwrap();
        let real = Tensor::from_vec(real, (batch, seq, 1), &Device::Cpu).unwrap();
        (layer, varmap, hidden, inputs, real, rng)
    }

    fn run(
        path: impl Fn(&Tensor) -> Result<Tensor>,
        varmap: &VarMap,
        hidden: &Var,
        real: &Tensor,
    ) -> (Tensor, Vec<(String, Tensor)>) {
        let (output, grads) = masked_output_and_gradients(path(hidden.as_tensor()).unwrap(), real);
        let mut named = vec![(
            "hidden".to_string(),
            grads.get(hidden.as_tensor()).unwrap().clone(),
        )];
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            named.push((name.clone(), grad.clone()));
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        (output, named)
    }

    fn compare(index: usize, dropout: f64, first_token_only: bool) {
        let (layer, varmap, hidden, inputs, real, rng) = setup(index, dropout, first_token_only);
        if dropout > 0.0 {
            rng.train(42);
        }
        let snapshot = rng.snapshot();
        let (fused, fused_grads) = run(
            |h| layer.forward_fused(h, &inputs, first_token_only),
            &varmap,
            &hidden,
            &real,
        );
        rng.restore(snapshot);
        let (composite, composite_grads) = run(
            |h| layer.forward_composite(h, &inputs),
            &varmap,
            &hidden,
            &real,
        );
        let what = format!("layer {index}, dropout {dropout}, first token {first_token_only}");
        let diff = max_diff(&fused, &composite);
        assert!(diff < 2e-5, "{what}: outputs differ by {diff}");
        let parameters = if index == 0 { 5 } else { 6 };
        assert_eq!(fused_grads.len(), 1 + parameters, "{what}");
        for ((name, a), (_, b)) in fused_grads.iter().zip(&composite_grads) {
            let diff = max_diff(a, b);
            let scale = max_abs(b).max(1.0);
            assert!(
                diff / scale < 1e-4,
                "{what}: gradient of {name} differs by {diff} (largest {scale})"
            );
            assert!(max_abs(b) > 0.0, "{what}: gradient of {name} is zero");
        }
    }

    /// Layer 0 (global, no attention norm), layer 1 (local: a 3-token half window, cut by
    /// the 13-token sequence), layer 2 (global, with its norm).
    #[test]
    fn fused_layer_equals_the_composite_layer() {
        for index in 0..3 {
            compare(index, 0.0, false);
        }
    }

    #[test]
    fn fused_layer_equals_the_composite_layer_with_dropout() {
        for index in 0..3 {
            compare(index, 0.3, false);
        }
    }

    #[test]
    fn first_token_layer_equals_the_composite_layer_at_the_first_token() {
        for index in [1, 2] {
            compare(index, 0.0, true);
            compare(index, 0.3, true);
        }
    }

    #[test]
    fn fused_layer_matches_in_inference_and_zeroes_padding() {
        let (layer, _varmap, hidden, inputs, real, _rng) = setup(1, 0.1, false);
        let detached = hidden.as_tensor().detach();
        let fused = layer.forward_fused(&detached, &inputs, false).unwrap();
        let composite = layer.forward_composite(&detached, &inputs).unwrap();
        let at_real = |t: &Tensor| t.broadcast_mul(&real).unwrap();
        assert!(max_diff(&at_real(&fused), &at_real(&composite)) < 2e-5);
        assert_eq!(max_abs(&(&fused - at_real(&fused)).unwrap()), 0.0);
    }
}
