//! The graph of a decoder reranker (Qwen3, Qwen2, Llama), as `crosstrain_model::qwen`
//! computes it: token embeddings, pre-norm layers (RMSNorm; grouped-query attention with
//! Qwen3's per-head q/k norms, rotary embeddings from f64-computed tables, the causal and
//! padding biases; SwiGLU), the final norm, and the head: the LM head's true/false rows at the
//! last position (a left-padded batch's last token), or the classification layer at the
//! rightmost token that is not the pad id. Built from opset-17 operators only, so every opset
//! the exporter accepts reads it the same way.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use crosstrain_model::qwen::{rotary::Rotary, DecoderConfig, DecoderHead};
use onnx_protobuf::tensor_proto::DataType;

use super::{attribute_int, attribute_ints, initializer, ExportError, GraphBuilder};

/// The score bias of a masked position, as the candle model's.
const MASKED: f32 = -1e30;

/// RMSNorm over the last axis (`width` wide) with the weight of `prefix`: the mean of squares
/// as a product with a `[width, 1]` column of `1/width` (no ReduceMean, whose form changed in
/// opset 18).
fn rms_norm(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    input: &str,
    prefix: &str,
    width: usize,
    epsilon: f32,
) -> Result<String, ExportError> {
    let averager = graph.float_tensor(
        &format!("const_mean_column_{width}"),
        &[width as i64, 1],
        &vec![1.0 / width as f32; width],
    );
    let epsilon = graph.float_tensor(&format!("const_rms_eps_{epsilon:e}"), &[], &[epsilon]);
    let squares = graph.node("Mul", &[input, input], vec![]);
    let mean = graph.node("MatMul", &[&squares, &averager], vec![]);
    let shifted = graph.node("Add", &[&mean, &epsilon], vec![]);
    let root = graph.node("Sqrt", &[&shifted], vec![]);
    let normed = graph.node("Div", &[input, &root], vec![]);
    let weight = initializer(graph, parameters, &format!("{prefix}.weight"), false)?;
    Ok(graph.node("Mul", &[&normed, &weight], vec![]))
}

/// `x·Wᵀ (+ b)` for the projection `prefix`, with its bias when it has one.
fn projection(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    input: &str,
    prefix: &str,
    bias: bool,
) -> Result<String, ExportError> {
    if bias {
        super::linear(graph, parameters, input, prefix)
    } else {
        super::product(graph, parameters, input, prefix)
    }
}

/// Appends the network's nodes and initializers to `graph`; the last node writes `logits`.
pub(super) fn emit(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    config: &DecoderConfig,
) -> Result<(), ExportError> {
    let epsilon = config.rms_norm_eps as f32;
    let heads = config.num_attention_heads as i64;
    let kv_heads = config.num_key_value_heads() as i64;
    let head_dim = config.head_dim();
    let width = config.hidden_size;

    // Sequence length and positions 0..L−1 (pads included, as the candle model numbers them).
    let super::Sequence {
        positions,
        length_1d: seq_len_1d,
    } = super::sequence(graph);
    let zero = graph.int_tensor("const_zero", &[], &[0]);
    let one = graph.int_tensor("const_one", &[], &[1]);
    let zero_1d = graph.int_tensor("const_zero_1d", &[1], &[0]);

    let embeddings = initializer(graph, parameters, "model.embed_tokens.weight", false)?;
    let mut hidden = graph.node("Gather", &[&embeddings, "input_ids"], vec![]);

    // The bias [b, 1, s, s]: padding keys and future keys masked.
    let (_, padding_bias) = super::padding_bias(graph, MASKED);
    let masked = graph.float_tensor("const_masked_decoder", &[], &[MASKED]);
    let rows = graph.node("Unsqueeze", &[&positions, &one], vec![]);
    let columns = graph.node("Unsqueeze", &[&positions, &zero], vec![]);
    let future = graph.node("Greater", &[&columns, &rows], vec![]);
    let future = graph.node(
        "Cast",
        &[&future],
        vec![attribute_int("to", DataType::FLOAT as i64)],
    );
    let causal_bias = graph.node("Mul", &[&future, &masked], vec![]);
    let bias = graph.node("Add", &[&padding_bias, &causal_bias], vec![]);

    // Rotary tables, sliced to the sequence.
    let rotary = Rotary::new(
        config.max_position_embeddings,
        head_dim,
        config.rope_theta,
        DType::F32,
        &Device::Cpu,
    )?;
    let (cos, sin) = rotary.tables();
    let dims = [config.max_position_embeddings as i64, head_dim as i64];
    let cos = graph.float_tensor("rotary_cos", &dims, &cos.flatten_all()?.to_vec1()?);
    let sin = graph.float_tensor("rotary_sin", &dims, &sin.flatten_all()?.to_vec1()?);
    let cos = graph.node("Slice", &[&cos, &zero_1d, &seq_len_1d, &zero_1d], vec![]);
    let sin = graph.node("Slice", &[&sin, &zero_1d, &seq_len_1d, &zero_1d], vec![]);

    let split_shape = |graph: &mut GraphBuilder, heads: i64| {
        graph.int_tensor(
            &format!("const_split_{heads}"),
            &[4],
            &[0, 0, heads, head_dim as i64],
        )
    };
    let merge_shape = graph.int_tensor("const_merge_heads", &[3], &[0, 0, heads * head_dim as i64]);
    let scale = graph.float_tensor(
        "const_attention_scale",
        &[],
        &[1.0 / (head_dim as f32).sqrt()],
    );
    let groups = heads / kv_heads;
    let expand_groups = graph.int_tensor("const_expand_groups", &[5], &[1, 1, groups, 1, 1]);
    let two_1d = graph.int_tensor("const_two_1d", &[1], &[2]);
    let grouped_shape = graph.int_tensor(
        "const_grouped_heads",
        &[4],
        &[0, heads, -1, head_dim as i64],
    );
    for layer in 0..config.num_hidden_layers {
        let prefix = format!("model.layers.{layer}");
        let normed = rms_norm(
            graph,
            parameters,
            &hidden,
            &format!("{prefix}.input_layernorm"),
            width,
            epsilon,
        )?;
        // [b, s, h] → [b, heads, s, head_dim], normed per head for Qwen3.
        let split = |graph: &mut GraphBuilder,
                     name: &str,
                     heads: i64,
                     bias: bool,
                     norm: bool|
         -> Result<String, ExportError> {
            let projected = projection(
                graph,
                parameters,
                &normed,
                &format!("{prefix}.self_attn.{name}_proj"),
                bias,
            )?;
            let shape = split_shape(graph, heads);
            let mut split = graph.node("Reshape", &[&projected, &shape], vec![]);
            if norm {
                split = rms_norm(
                    graph,
                    parameters,
                    &split,
                    &format!("{prefix}.self_attn.{name}_norm"),
                    head_dim,
                    epsilon,
                )?;
            }
            Ok(graph.node(
                "Transpose",
                &[&split],
                vec![attribute_ints("perm", &[0, 2, 1, 3])],
            ))
        };
        let qkv_bias = config.qkv_bias();
        let qk_norm = config.qk_norm();
        let query = split(graph, "q", heads, qkv_bias, qk_norm)?;
        let key = split(graph, "k", kv_heads, qkv_bias, qk_norm)?;
        let value = split(graph, "v", kv_heads, qkv_bias, false)?;
        let rotate =
            |graph: &mut GraphBuilder, x: &str| super::rotate(graph, x, &cos, &sin, head_dim);
        let query = rotate(graph, &query);
        let key = rotate(graph, &key);
        // Each key/value head serves the query heads of its group.
        let repeat = |graph: &mut GraphBuilder, x: &str| {
            if groups == 1 {
                return x.to_string();
            }
            let widened = graph.node("Unsqueeze", &[x, &two_1d], vec![]);
            let expanded = graph.node("Expand", &[&widened, &expand_groups], vec![]);
            graph.node("Reshape", &[&expanded, &grouped_shape], vec![])
        };
        let key = repeat(graph, &key);
        let value = repeat(graph, &value);
        let key_t = graph.node(
            "Transpose",
            &[&key],
            vec![attribute_ints("perm", &[0, 1, 3, 2])],
        );
        let context =
            super::attention(graph, [&query, &key_t, &value], &scale, &bias, &merge_shape);
        let attended = projection(
            graph,
            parameters,
            &context,
            &format!("{prefix}.self_attn.o_proj"),
            config.output_bias(),
        )?;
        hidden = graph.node("Add", &[&hidden, &attended], vec![]);

        let normed = rms_norm(
            graph,
            parameters,
            &hidden,
            &format!("{prefix}.post_attention_layernorm"),
            width,
            epsilon,
        )?;
        let gate = super::product(
            graph,
            parameters,
            &normed,
            &format!("{prefix}.mlp.gate_proj"),
        )?;
        let sigmoid = graph.node("Sigmoid", &[&gate], vec![]);
        let activated = graph.node("Mul", &[&gate, &sigmoid], vec![]);
        let up = super::product(graph, parameters, &normed, &format!("{prefix}.mlp.up_proj"))?;
        let gated = graph.node("Mul", &[&activated, &up], vec![]);
        let output = super::product(
            graph,
            parameters,
            &gated,
            &format!("{prefix}.mlp.down_proj"),
        )?;
        hidden = graph.node("Add", &[&hidden, &output], vec![]);
    }
    let hidden = rms_norm(graph, parameters, &hidden, "model.norm", width, epsilon)?;

    match config.head {
        DecoderHead::LogitScore {
            true_token_id,
            false_token_id,
        } => {
            // A left-padded batch: every row's last position is its last token.
            let last_index = graph.int_tensor("const_last_index", &[], &[-1]);
            let last = graph.node(
                "Gather",
                &[&hidden, &last_index],
                vec![attribute_int("axis", 1)],
            );
            let lm_head = if config.tie_word_embeddings {
                "model.embed_tokens.weight"
            } else {
                "lm_head.weight"
            };
            let lm_head = parameters
                .get(lm_head)
                .ok_or_else(|| ExportError::MissingParameter(lm_head.to_string()))?;
            let mut ids = vec![true_token_id];
            ids.extend(false_token_id);
            let index = Tensor::new(ids.as_slice(), lm_head.device())?;
            let rows = lm_head
                .index_select(&index, 0)?
                .t()?
                .contiguous()?
                .to_dtype(DType::F32)?;
            let rows = graph.float_tensor(
                "lm_head_score_rows",
                &[width as i64, ids.len() as i64],
                &rows.flatten_all()?.to_vec1()?,
            );
            let logits = graph.node("MatMul", &[&last, &rows], vec![]);
            if false_token_id.is_some() {
                let one_1d = graph.int_tensor("const_one_1d", &[1], &[1]);
                let two_end = graph.int_tensor("const_two_end", &[1], &[2]);
                let axis = graph.int_tensor("const_axis_1", &[1], &[1]);
                let yes = graph.node("Slice", &[&logits, &zero_1d, &one_1d, &axis], vec![]);
                let no = graph.node("Slice", &[&logits, &one_1d, &two_end, &axis], vec![]);
                graph.node("Sub", &[&yes, &no], vec![]);
            } else {
                graph.node("Identity", &[&logits], vec![]);
            }
        }
        DecoderHead::Classification { .. } => {
            // The rightmost token that is not the pad id, from the ids (as transformers).
            let pad = graph.int_tensor(
                "const_pad_id",
                &[],
                &[i64::from(config.pad_token_id.unwrap_or(u32::MAX))],
            );
            let is_pad = graph.node("Equal", &["input_ids", &pad], vec![]);
            let real = graph.node("Not", &[&is_pad], vec![]);
            let real = graph.node(
                "Cast",
                &[&real],
                vec![attribute_int("to", DataType::INT64 as i64)],
            );
            let weighted = graph.node("Mul", &[&real, &positions], vec![]);
            let last = graph.node(
                "ArgMax",
                &[&weighted],
                vec![attribute_int("axis", 1), attribute_int("keepdims", 1)],
            );
            let index = graph.node("Unsqueeze", &[&last, &two_1d], vec![]);
            let broadcast = graph.int_tensor("const_pool_shape", &[3], &[1, 1, width as i64]);
            let index = graph.node("Expand", &[&index, &broadcast], vec![]);
            let pooled = graph.node(
                "GatherElements",
                &[&hidden, &index],
                vec![attribute_int("axis", 1)],
            );
            let flat = graph.int_tensor("const_pooled_shape", &[2], &[0, width as i64]);
            let pooled = graph.node("Reshape", &[&pooled, &flat], vec![]);
            super::product(graph, parameters, &pooled, "score")?;
        }
    }
    if let Some(last) = graph.nodes.last_mut() {
        last.output = vec!["logits".into()];
    }
    Ok(())
}
