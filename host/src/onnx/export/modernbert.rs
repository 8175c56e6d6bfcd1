//! The graph of ModernBERT, as `crosstrain_model::modernbert` computes it: token embeddings
//! and a bias-free norm, pre-norm layers (fused `Wqkv`, rotary embeddings from tables of the
//! layer's theta, the padding bias and on local layers the window bias, GeGLU), the final
//! norm, `cls` or masked-`mean` pooling, the head (dense → GELU → norm) and the classifier.

use std::collections::HashMap;

use candle_core::Tensor;
use crosstrain_model::modernbert::{ClassifierPooling, ModernBertConfig};
use onnx_protobuf::tensor_proto::DataType;

use super::bert::gelu_erf;
use super::{attribute_int, attribute_ints, initializer, ExportError, GraphBuilder};

/// The score bias of a masked position, as the candle model's (finite, so that a row with
/// every key masked stays finite).
const MASKED: f32 = -1e9;

/// LayerNormalization with the weight of `prefix` and no bias.
fn norm(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    input: &str,
    prefix: &str,
    epsilon: f32,
) -> Result<String, ExportError> {
    super::layer_norm_with(graph, parameters, input, prefix, epsilon, false)
}

/// `[positions, head_size]` cos and sin tables for `theta`, computed as the candle model
/// computes them (f32 angles), as initializers.
fn rotary_tables(
    graph: &mut GraphBuilder,
    positions: usize,
    head_size: usize,
    theta: f64,
) -> Result<(String, String), ExportError> {
    let (cos, sin) = crosstrain_model::modernbert::rotary_cos_sin(
        positions,
        head_size,
        theta,
        &candle_core::Device::Cpu,
    )?;
    let dims = [positions as i64, head_size as i64];
    let name = format!("rotary_{theta}");
    let cos = graph.float_tensor(
        &format!("{name}_cos"),
        &dims,
        &cos.flatten_all()?.to_vec1()?,
    );
    let sin = graph.float_tensor(
        &format!("{name}_sin"),
        &dims,
        &sin.flatten_all()?.to_vec1()?,
    );
    Ok((cos, sin))
}

/// Appends the network's nodes and initializers to `graph`; the last node writes `logits`.
pub(super) fn emit(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    config: &ModernBertConfig,
) -> Result<(), ExportError> {
    let epsilon = config.norm_eps as f32;
    let heads = config.num_attention_heads as i64;
    let head_size = config.head_size();
    let width = config.hidden_size as i64;
    let intermediate = config.intermediate_size as i64;

    // Sequence length and positions.
    let super::Sequence {
        positions,
        length_1d: seq_len_1d,
    } = super::sequence(graph);
    let zero = graph.int_tensor("const_zero", &[], &[0]);
    let one = graph.int_tensor("const_one", &[], &[1]);
    let zero_1d = graph.int_tensor("const_zero_1d", &[1], &[0]);

    // Embeddings.
    let tokens = initializer(
        graph,
        parameters,
        "model.embeddings.tok_embeddings.weight",
        false,
    )?;
    let embedded = graph.node("Gather", &[&tokens, "input_ids"], vec![]);
    let mut hidden = norm(
        graph,
        parameters,
        &embedded,
        "model.embeddings.norm",
        epsilon,
    )?;

    // Padding bias [b, 1, 1, s] and window bias [s, s].
    let (mask, padding_bias) = super::padding_bias(graph, MASKED);
    let masked = graph.float_tensor("const_masked", &[], &[MASKED]);
    let rows = graph.node("Unsqueeze", &[&positions, &one], vec![]);
    let columns = graph.node("Unsqueeze", &[&positions, &zero], vec![]);
    let distance = graph.node("Sub", &[&rows, &columns], vec![]);
    let distance = graph.node("Abs", &[&distance], vec![]);
    let half_window = graph.int_tensor(
        "const_half_window",
        &[],
        &[(config.local_attention / 2) as i64],
    );
    let outside = graph.node("Greater", &[&distance, &half_window], vec![]);
    let outside = graph.node(
        "Cast",
        &[&outside],
        vec![attribute_int("to", DataType::FLOAT as i64)],
    );
    let window_bias = graph.node("Mul", &[&outside, &masked], vec![]);
    let local_bias = graph.node("Add", &[&padding_bias, &window_bias], vec![]);

    let qkv_shape = graph.int_tensor("const_qkv_shape", &[5], &[0, 0, 3, heads, head_size as i64]);
    let merge_shape = graph.int_tensor("const_merge_heads", &[3], &[0, 0, width]);
    let scale = graph.float_tensor(
        "const_attention_scale",
        &[],
        &[1.0 / (head_size as f32).sqrt()],
    );
    let last_axis = graph.int_tensor("const_last_axis", &[1], &[-1]);
    let gate_start = graph.int_tensor("const_gate_start", &[1], &[intermediate]);
    let gate_end = graph.int_tensor("const_gate_end", &[1], &[2 * intermediate]);
    let mut tables: HashMap<u64, (String, String)> = HashMap::new();
    for layer in 0..config.num_hidden_layers {
        let prefix = format!("model.layers.{layer}");
        let theta = config.rope_theta(layer);
        let (cos, sin) = match tables.get(&theta.to_bits()) {
            Some(tables) => tables.clone(),
            None => {
                let (cos, sin) =
                    rotary_tables(graph, config.max_position_embeddings, head_size, theta)?;
                let cos = graph.node("Slice", &[&cos, &zero_1d, &seq_len_1d, &zero_1d], vec![]);
                let sin = graph.node("Slice", &[&sin, &zero_1d, &seq_len_1d, &zero_1d], vec![]);
                tables.insert(theta.to_bits(), (cos.clone(), sin.clone()));
                (cos, sin)
            }
        };
        let normed = if layer == 0 {
            hidden.clone()
        } else {
            norm(
                graph,
                parameters,
                &hidden,
                &format!("{prefix}.attn_norm"),
                epsilon,
            )?
        };
        let qkv = super::product(graph, parameters, &normed, &format!("{prefix}.attn.Wqkv"))?;
        let qkv = graph.node("Reshape", &[&qkv, &qkv_shape], vec![]);
        // [3, b, heads, s, head_size]
        let qkv = graph.node(
            "Transpose",
            &[&qkv],
            vec![attribute_ints("perm", &[2, 0, 3, 1, 4])],
        );
        let part = |graph: &mut GraphBuilder, index: i64| {
            let index = graph.int_tensor(&format!("const_qkv_{index}"), &[], &[index]);
            graph.node("Gather", &[&qkv, &index], vec![attribute_int("axis", 0)])
        };
        let rotate =
            |graph: &mut GraphBuilder, x: &str| super::rotate(graph, x, &cos, &sin, head_size);
        let query = part(graph, 0);
        let query = rotate(graph, &query);
        let key = part(graph, 1);
        let key = rotate(graph, &key);
        let value = part(graph, 2);
        let key_t = graph.node(
            "Transpose",
            &[&key],
            vec![attribute_ints("perm", &[0, 1, 3, 2])],
        );
        let bias = if config.is_global(layer) {
            &padding_bias
        } else {
            &local_bias
        };
        let context = super::attention(graph, [&query, &key_t, &value], &scale, bias, &merge_shape);
        let attended = super::product(graph, parameters, &context, &format!("{prefix}.attn.Wo"))?;
        hidden = graph.node("Add", &[&hidden, &attended], vec![]);

        let normed = norm(
            graph,
            parameters,
            &hidden,
            &format!("{prefix}.mlp_norm"),
            epsilon,
        )?;
        let both = super::product(graph, parameters, &normed, &format!("{prefix}.mlp.Wi"))?;
        let input = graph.node("Slice", &[&both, &zero_1d, &gate_start, &last_axis], vec![]);
        let gate = graph.node(
            "Slice",
            &[&both, &gate_start, &gate_end, &last_axis],
            vec![],
        );
        let activated = gelu_erf(graph, &input);
        let gated = graph.node("Mul", &[&activated, &gate], vec![]);
        let output = super::product(graph, parameters, &gated, &format!("{prefix}.mlp.Wo"))?;
        hidden = graph.node("Add", &[&hidden, &output], vec![]);
    }
    let hidden = norm(graph, parameters, &hidden, "model.final_norm", epsilon)?;

    let pooled = match config.classifier_pooling {
        ClassifierPooling::Cls => {
            let cls_index = graph.int_tensor("const_cls_index", &[], &[0]);
            graph.node(
                "Gather",
                &[&hidden, &cls_index],
                vec![attribute_int("axis", 1)],
            )
        }
        ClassifierPooling::Mean => {
            let two = graph.int_tensor("const_two_1d", &[1], &[2]);
            let weights = graph.node("Unsqueeze", &[&mask, &two], vec![]);
            let weighted = graph.node("Mul", &[&hidden, &weights], vec![]);
            let one_1d = graph.int_tensor("const_one_1d", &[1], &[1]);
            let summed = graph.node(
                "ReduceSum",
                &[&weighted, &one_1d],
                vec![attribute_int("keepdims", 0)],
            );
            let counts = graph.node(
                "ReduceSum",
                &[&weights, &one_1d],
                vec![attribute_int("keepdims", 0)],
            );
            graph.node("Div", &[&summed, &counts], vec![])
        }
    };
    let dense = super::product(graph, parameters, &pooled, "head.dense")?;
    let activated = gelu_erf(graph, &dense);
    let head = norm(graph, parameters, &activated, "head.norm", epsilon)?;
    super::linear(graph, parameters, &head, "classifier")?;
    // The classifier's bias Add is the graph's output.
    if let Some(last) = graph.nodes.last_mut() {
        last.output = vec!["logits".into()];
    }
    Ok(())
}
