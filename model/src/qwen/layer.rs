//! One pre-norm decoder layer: `h = x + attn(norm(x))`, `out = h + mlp(norm(h))`. On the CPU
//! in f32 the layer runs as one fused op ([`crate::kernels::decoder_layer`]); elsewhere (CUDA,
//! bf16 weights) and under LoRA adapters, as the composite candle ops below, which the tests
//! hold the fused op to.

use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::DecoderAttention;
use super::config::DecoderConfig;
use super::mlp::DecoderMlp;
use super::rms_norm::RmsNorm;
use super::rotary::Rotary;
use crate::dropout::DropoutRng;
use crate::kernels::decoder_layer::{
    self as fused_layer, AdapterDims, DecoderLayerDims, DecoderLayerParameters, LayerWeights,
    QueryRows, RotaryTables,
};
use crate::lora::LoraLinear;

/// `Qwen3DecoderLayer` / `Qwen2DecoderLayer` / `LlamaDecoderLayer`.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: DecoderAttention,
    post_attention_layernorm: RmsNorm,
    mlp: DecoderMlp,
    dims: DecoderLayerDims,
    /// Whether the model has a LoRA configuration: the base is then frozen, and the fused op
    /// takes it apart from the adapters, which alone get gradients.
    adapted: bool,
}

/// What every layer of one forward pass shares: the composite path's rotary tables and
/// causal bias, the fused path's padding bias and rotary values.
pub struct LayerInputs {
    /// Composite: the rotary tables and the `[batch, 1, L, L]` causal padding bias.
    pub composite: Option<(Rotary, Tensor)>,
    /// Fused: the `[batch, L]` padding bias and the rotary values.
    pub fused: Option<(Tensor, Arc<RotaryTables>)>,
}

impl DecoderLayer {
    /// Loads `layers.N`.
    pub fn load(vb: VarBuilder, config: &DecoderConfig, rng: &DropoutRng) -> Result<Self> {
        let eps = config.rms_norm_eps;
        Ok(Self {
            input_layernorm: RmsNorm::load(vb.pp("input_layernorm"), config.hidden_size, eps)?,
            self_attn: DecoderAttention::load(vb.pp("self_attn"), config, rng)?,
            post_attention_layernorm: RmsNorm::load(
                vb.pp("post_attention_layernorm"),
                config.hidden_size,
                eps,
            )?,
            mlp: DecoderMlp::load(vb.pp("mlp"), config, rng)?,
            dims: DecoderLayerDims {
                hidden: config.hidden_size,
                intermediate: config.intermediate_size,
                heads: config.num_attention_heads,
                kv_heads: config.num_key_value_heads(),
                head_dim: config.head_dim(),
                eps: eps as f32,
                qkv_bias: config.qkv_bias(),
                output_bias: config.output_bias(),
                qk_norm: config.qk_norm(),
            },
            adapted: config.lora.is_some(),
        })
    }

    /// The seven projections in [`Projection::ALL`]'s order.
    fn projections(&self) -> [&LoraLinear; 7] {
        let (attention, mlp) = (&self.self_attn, &self.mlp);
        [
            &attention.q_proj,
            &attention.k_proj,
            &attention.v_proj,
            &attention.o_proj,
            &mlp.gate_proj,
            &mlp.up_proj,
            &mlp.down_proj,
        ]
    }

    /// Whether the layer runs as the fused op on `hidden`: f32 activations on the CPU, and
    /// either f32 weights, or (LoRA) a frozen base of any float dtype with f32 adapters
    /// without dropout (a layer module in `modules_to_save`, or LoRA dropout, takes the
    /// composite path).
    pub fn runs_fused(&self, hidden: &Tensor) -> bool {
        if !hidden.device().is_cpu() || hidden.dtype() != DType::F32 {
            return false;
        }
        let parameters = self.parameters();
        let base = parameters.in_packing_order();
        if !base.iter().all(|t| t.device().is_cpu()) {
            return false;
        }
        if !self.adapted {
            return base.iter().all(|t| t.dtype() == DType::F32);
        }
        base.iter().all(|t| !t.is_variable())
            && self.projections().iter().all(|projection| {
                projection
                    .adapter_parts()
                    .is_none_or(|(a, b, _, no_dropout)| {
                        no_dropout && a.dtype() == DType::F32 && b.dtype() == DType::F32
                    })
            })
    }

    /// `[batch, L, hidden]` through the layer: the fused op when `inputs` has its inputs,
    /// else the composite ops. With [`QueryRows::Last`] only each sequence's last real row
    /// is needed (the fused op computes only it, zeros elsewhere).
    pub fn forward(
        &self,
        hidden: &Tensor,
        inputs: &LayerInputs,
        queries: QueryRows,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("decoder_layer").entered();
        match (&inputs.fused, &inputs.composite) {
            (Some((padding, tables)), _) => {
                self.forward_fused(hidden, padding, tables.clone(), queries)
            }
            (None, Some((rotary, bias))) => self.forward_composite(hidden, rotary, bias),
            (None, None) => candle_core::bail!("decoder layer: no attention inputs"),
        }
    }

    /// The layer from candle ops; `bias` from [`super::attention::causal_padding_bias`].
    pub fn forward_composite(
        &self,
        hidden: &Tensor,
        rotary: &Rotary,
        bias: &Tensor,
    ) -> Result<Tensor> {
        let attended =
            self.self_attn
                .forward(&self.input_layernorm.forward(hidden)?, rotary, bias)?;
        let hidden = (hidden + attended)?;
        let transformed = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&hidden)?)?;
        hidden + transformed
    }

    /// The parameters in the fused op's terms.
    fn parameters(&self) -> DecoderLayerParameters<'_> {
        let attention = &self.self_attn;
        let qkv_biases = match (
            attention.q_proj.bias(),
            attention.k_proj.bias(),
            attention.v_proj.bias(),
        ) {
            (Some(q), Some(k), Some(v)) => Some([q, k, v]),
            _ => None,
        };
        let qk_norms = match (&attention.q_norm, &attention.k_norm) {
            (Some(q), Some(k)) => Some([q.weight(), k.weight()]),
            _ => None,
        };
        DecoderLayerParameters {
            input_norm: self.input_layernorm.weight(),
            query: attention.q_proj.weight(),
            key: attention.k_proj.weight(),
            value: attention.v_proj.weight(),
            qkv_biases,
            output: attention.o_proj.weight(),
            output_bias: attention.o_proj.bias(),
            qk_norms,
            post_norm: self.post_attention_layernorm.weight(),
            gate: self.mlp.gate_proj.weight(),
            up: self.mlp.up_proj.weight(),
            down: self.mlp.down_proj.weight(),
        }
    }

    /// The layer as one fused CPU op; `padding` is `[batch, L]`, 0 on real tokens and a
    /// large negative number on padding.
    pub fn forward_fused(
        &self,
        hidden: &Tensor,
        padding: &Tensor,
        tables: Arc<RotaryTables>,
        queries: QueryRows,
    ) -> Result<Tensor> {
        let parameters = self.parameters();
        if parameters.qkv_biases.is_none() && self.dims.qkv_bias
            || parameters.qk_norms.is_none() && self.dims.qk_norm
        {
            candle_core::bail!("decoder layer: parameters missing for {:?}", self.dims);
        }
        let (batch, length, _) = hidden.dims3()?;
        // Drawn as the composite layer draws it, so both paths see the same mask.
        let attention_dropout = self
            .self_attn
            .dropout
            .mask_values(batch * self.dims.heads * length * length);
        if !self.adapted {
            let packed = fused_layer::pack_parameters(&parameters)?;
            let keep_activations = hidden.track_op() || packed.track_op();
            return fused_layer::decoder_layer(
                hidden,
                padding,
                LayerWeights::Packed(&packed),
                self.dims,
                tables,
                attention_dropout,
                keep_activations,
                queries,
            );
        }
        let mut targets = [false; 7];
        let (mut rank, mut scaling) = (0, 0.0);
        let mut pieces = Vec::new();
        for (target, projection) in targets.iter_mut().zip(self.projections()) {
            if let Some((a, b, factor, _)) = projection.adapter_parts() {
                *target = true;
                (rank, scaling) = (a.dim(0)?, factor as f32);
                pieces.extend([a.flatten_all()?, b.flatten_all()?]);
            }
        }
        let adapters = if pieces.is_empty() {
            Tensor::zeros(0, DType::F32, hidden.device())?
        } else {
            Tensor::cat(&pieces, 0)?
        };
        let keep_activations = hidden.track_op() || adapters.track_op();
        fused_layer::decoder_layer(
            hidden,
            padding,
            LayerWeights::Adapted {
                base: parameters.in_packing_order().into_iter().cloned().collect(),
                adapters: &adapters,
                dims: AdapterDims {
                    rank,
                    scaling,
                    targets,
                },
            },
            self.dims,
            tables,
            attention_dropout,
            keep_activations,
            queries,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qwen::attention::{causal_padding_bias, MASKED};
    use crate::qwen::config::DecoderKind;
    use crate::qwen::rotary::rotary_tables;
    use crate::test_support::{masked_output_and_gradients, max_abs, max_diff, random};
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    /// A layer whose heads are wider in all than the hidden states (4 × 8 against 24) and
    /// share key/value heads in pairs.
    fn config(kind: DecoderKind, dropout: f64, attention_bias: bool) -> DecoderConfig {
        let mut config: DecoderConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "hidden_size": 24, "intermediate_size": 40,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 8, "attention_dropout": dropout, "attention_bias": attention_bias
        }))
        .unwrap();
        config.kind = kind;
        config.rope_theta = 10_000.0;
        config
    }

    struct Case {
        layer: DecoderLayer,
        varmap: VarMap,
        /// Trainable tensors outside the VarMap (an adapted layer's A and B).
        adapters: Vec<(String, Var)>,
        hidden: Var,
        mask: Vec<u32>,
        rng: DropoutRng,
        batch: usize,
        length: usize,
    }

    /// Random weights (norm scales near 1) and inputs; three sequences of 11, 7 and 1 real
    /// tokens, padded on the left (as causal rerankers are) or on the right.
    fn setup(config: &DecoderConfig, left_padded: bool) -> Case {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let rng = DropoutRng::default();
        let layer = DecoderLayer::load(vb, config, &rng).unwrap();
        for (n, (name, var)) in varmap.data().lock().unwrap().iter().enumerate() {
            let shape = var.as_tensor().dims().to_vec();
            let values = if name.contains("norm") {
                (random(&shape, 100 + n as u64, 0.3) + 1.0).unwrap()
            } else {
                random(&shape, 100 + n as u64, 0.3)
            };
            var.set(&values).unwrap();
        }
        let (batch, length) = (3, 11);
        let hidden = Var::from_tensor(&random(&[batch, length, 24], 1, 2.0)).unwrap();
        let mut mask = vec![0u32; batch * length];
        for (b, real) in [11usize, 7, 1].into_iter().enumerate() {
            let row = &mut mask[b * length..(b + 1) * length];
            if left_padded {
                row[length - real..].fill(1);
            } else {
                row[..real].fill(1);
            }
        }
        Case {
            layer,
            varmap,
            adapters: Vec::new(),
            hidden,
            mask,
            rng,
            batch,
            length,
        }
    }

    impl Case {
        /// 1 at the rows compared: every real token, or each sequence's last.
        fn compared_rows(&self, queries: QueryRows) -> Tensor {
            let mut rows = vec![0f32; self.mask.len()];
            for (b, mask) in self.mask.chunks(self.length).enumerate() {
                let last = mask.iter().rposition(|&m| m == 1).unwrap();
                for (j, &m) in mask.iter().enumerate() {
                    if m == 1 && (queries == QueryRows::All || j == last) {
                        rows[b * self.length + j] = 1.0;
                    }
                }
            }
            Tensor::from_vec(rows, (self.batch, self.length, 1), &Device::Cpu).unwrap()
        }

        fn fused(&self, hidden: &Tensor, queries: QueryRows) -> Result<Tensor> {
            let padding: Vec<f32> = self
                .mask
                .iter()
                .map(|&m| if m == 1 { 0.0 } else { MASKED })
                .collect();
            let padding = Tensor::from_vec(padding, (self.batch, self.length), &Device::Cpu)?;
            let tables = Arc::new(rotary_tables(self.length, 8, 10_000.0));
            self.layer.forward_fused(hidden, &padding, tables, queries)
        }

        fn composite(&self, hidden: &Tensor) -> Result<Tensor> {
            let rotary = Rotary::new(self.length, 8, 10_000.0, DType::F32, &Device::Cpu)?;
            let bias = causal_padding_bias(
                &self.mask,
                self.batch,
                self.length,
                DType::F32,
                &Device::Cpu,
            )?;
            self.layer.forward_composite(hidden, &rotary, &bias)
        }

        /// The output at the compared rows and the gradients of a random projection of it
        /// for the input and every parameter, by name.
        fn run(
            &self,
            path: impl Fn(&Tensor) -> Result<Tensor>,
            rows: &Tensor,
        ) -> (Tensor, Vec<(String, Tensor)>) {
            let (output, grads) =
                masked_output_and_gradients(path(self.hidden.as_tensor()).unwrap(), rows);
            let mut named = vec![(
                "hidden".to_string(),
                grads.get(self.hidden.as_tensor()).unwrap().clone(),
            )];
            let vars = self.varmap.data().lock().unwrap().clone();
            for (name, var) in vars.iter().chain(self.adapters.iter().map(|(n, v)| (n, v))) {
                let grad = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}"));
                named.push((name.clone(), grad.clone()));
            }
            named.sort_by(|a, b| a.0.cmp(&b.0));
            (output, named)
        }
    }

    fn compare(config: &DecoderConfig, left_padded: bool, queries: QueryRows) {
        let case = setup(config, left_padded);
        let dropout = config.attention_dropout > 0.0;
        if dropout {
            case.rng.train(42);
        }
        let rows = case.compared_rows(queries);
        let snapshot = case.rng.snapshot();
        let (fused, fused_grads) = case.run(|h| case.fused(h, queries), &rows);
        case.rng.restore(snapshot);
        let (composite, composite_grads) = case.run(|h| case.composite(h), &rows);
        let what = format!(
            "{:?}, dropout {}, bias {}, left padded {left_padded}, {queries:?}",
            config.kind, config.attention_dropout, config.attention_bias
        );
        let diff = max_diff(&fused, &composite);
        assert!(diff < 2e-5, "{what}: outputs differ by {diff}");
        assert!(max_abs(&composite) > 0.1, "{what}");
        assert_eq!(fused_grads.len(), composite_grads.len(), "{what}");
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

    #[test]
    fn fused_layer_equals_the_composite_layer() {
        for (kind, bias) in [
            (DecoderKind::Qwen3, false),
            (DecoderKind::Qwen2, false),
            (DecoderKind::Llama, true),
        ] {
            for left_padded in [true, false] {
                compare(&config(kind, 0.0, bias), left_padded, QueryRows::All);
            }
        }
    }

    #[test]
    fn fused_layer_equals_the_composite_layer_with_attention_dropout() {
        compare(
            &config(DecoderKind::Qwen3, 0.3, false),
            true,
            QueryRows::All,
        );
    }

    #[test]
    fn last_token_layer_equals_the_composite_layer_at_the_last_tokens() {
        for left_padded in [true, false] {
            compare(
                &config(DecoderKind::Qwen3, 0.0, false),
                left_padded,
                QueryRows::Last,
            );
        }
        compare(
            &config(DecoderKind::Qwen2, 0.3, false),
            true,
            QueryRows::Last,
        );
    }

    /// A layer with LoRA adapters on six of its seven projections (not `k_proj`) over a
    /// frozen base (plain tensors; in bf16 but for the norms when `bf16`): the fused op
    /// against the composite layer, outputs and the gradients of the input and adapters.
    fn compare_adapted(kind: DecoderKind, bf16: bool, queries: QueryRows) {
        let mut config = config(kind, 0.0, false);
        config.lora = Some(crate::lora::LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            target_modules: Some(crate::lora::TargetModules::Names(
                [
                    "q_proj",
                    "v_proj",
                    "o_proj",
                    "gate_proj",
                    "up_proj",
                    "down_proj",
                ]
                .map(String::from)
                .to_vec(),
            )),
            ..crate::lora::LoraConfig::default()
        });
        // The tensors the layer loads, from a VarMap-built twin: base ones as plain tensors,
        // adapter ones as variables.
        let twin = setup(&config, true);
        let mut tensors = std::collections::HashMap::new();
        let mut adapters = Vec::new();
        for (name, var) in twin.varmap.data().lock().unwrap().iter() {
            if name.contains("lora_") {
                let var = Var::from_tensor(&(var.as_tensor() * 0.5).unwrap()).unwrap();
                tensors.insert(name.clone(), var.as_tensor().clone());
                adapters.push((name.clone(), var));
            } else {
                let dtype = if bf16 && !name.contains("norm") {
                    DType::BF16
                } else {
                    DType::F32
                };
                let value = var.as_tensor().to_dtype(dtype).unwrap().detach();
                tensors.insert(name.clone(), value);
            }
        }
        assert_eq!(adapters.len(), 12);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let case = Case {
            layer: DecoderLayer::load(vb, &config, &twin.rng).unwrap(),
            varmap: VarMap::new(),
            adapters,
            ..twin
        };
        assert!(case.layer.runs_fused(case.hidden.as_tensor()));
        let rows = case.compared_rows(queries);
        let (fused, fused_grads) = case.run(|h| case.fused(h, queries), &rows);
        let (composite, composite_grads) = case.run(|h| case.composite(h), &rows);
        let what = format!("LoRA {kind:?}, bf16 {bf16}, {queries:?}");
        let diff = max_diff(&fused, &composite);
        assert!(diff < 2e-5, "{what}: outputs differ by {diff}");
        assert_eq!(fused_grads.len(), 13, "{what}");
        for ((name, a), (_, b)) in fused_grads.iter().zip(&composite_grads) {
            let diff = max_diff(a, b);
            let scale = max_abs(b).max(1.0);
            assert!(
                diff / scale < 1e-4,
                "{what}: gradient of {name} differs by {diff} (largest {scale})"
            );
            assert!(max_abs(b) > 0.0, "{what}: gradient of {name} is zero");
        }
        // An input that needs no gradient (the first layer over frozen embeddings): the
        // same adapter gradients, though the backward pass skips the input's.
        let detached = case.hidden.as_tensor().detach();
        let (_, grads) =
            masked_output_and_gradients(case.fused(&detached, queries).unwrap(), &rows);
        assert!(grads.get(&detached).is_none(), "{what}");
        for (name, var) in &case.adapters {
            let expected = &fused_grads.iter().find(|(n, _)| n == name).unwrap().1;
            let diff = max_diff(grads.get(var.as_tensor()).unwrap(), expected);
            assert!(
                diff < 1e-6,
                "{what}: {name} without the input's gradient: {diff}"
            );
        }
    }

    #[test]
    fn adapted_fused_layer_equals_the_composite_layer() {
        compare_adapted(DecoderKind::Qwen3, false, QueryRows::All);
        compare_adapted(DecoderKind::Qwen2, false, QueryRows::Last);
        compare_adapted(DecoderKind::Qwen3, true, QueryRows::All);
    }

    #[test]
    fn fused_layer_matches_in_inference_and_zeroes_padding() {
        let case = setup(&config(DecoderKind::Qwen3, 0.1, false), true);
        let detached = case.hidden.as_tensor().detach();
        let rows = case.compared_rows(QueryRows::All);
        let fused = case.fused(&detached, QueryRows::All).unwrap();
        let composite = case.composite(&detached).unwrap();
        let at_real = |t: &Tensor| t.broadcast_mul(&rows).unwrap();
        assert!(max_diff(&at_real(&fused), &at_real(&composite)) < 2e-5);
        assert_eq!(max_abs(&(&fused - at_real(&fused)).unwrap()), 0.0);
    }
}
