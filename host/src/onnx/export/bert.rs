//! The graph of BERT's encoder and the families built on it (XLM-RoBERTa, ELECTRA):
//! embeddings (word + position + token type, LayerNorm, ELECTRA's projection), post-norm
//! encoder layers, and the head (BERT's pooler and classifier, or the RoBERTa-style
//! classification head), as `crosstrain_model` computes them.

use std::collections::HashMap;

use candle_core::Tensor;
use crosstrain_model::bert::{BertConfig, HiddenAct, PositionIds};
use crosstrain_model::classification_head::HeadActivation;

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::AttributeProto;

use super::{
    attribute_int, attribute_ints, initializer, layer_norm, linear, ExportError, GraphBuilder,
};

/// What distinguishes the families that share BERT's encoder, in the graph.
pub(super) struct EncoderGraph<'a> {
    /// The config.
    pub config: &'a BertConfig,
    /// The base model's tensor prefix (`bert`, `roberta`, `electra`).
    pub prefix: &'static str,
    /// How positions are numbered.
    pub positions: PositionIds,
    /// Whether the graph takes `token_type_ids` (else every token has type 0).
    pub token_types: bool,
    /// The head on the first token.
    pub head: Head,
}

/// A family's head.
pub(super) enum Head {
    /// BERT: `PREFIX.pooler.dense` → tanh → `classifier`.
    Pooler,
    /// RoBERTa-style: `classifier.dense` → activation → `classifier.out_proj`.
    Classification(HeadActivation),
}

/// `0.5·x·(1 + erf(x/√2))`, as candle's gelu_erf.
pub(super) fn gelu_erf(graph: &mut GraphBuilder, x: &str) -> String {
    let one = graph.float_tensor("const_one_float", &[], &[1.0]);
    let half = graph.float_tensor("const_half", &[], &[0.5]);
    let sqrt_two = graph.float_tensor("const_sqrt_two", &[], &[std::f32::consts::SQRT_2]);
    let scaled = graph.node("Div", &[x, &sqrt_two], vec![]);
    let erf = graph.node("Erf", &[&scaled], vec![]);
    let shifted = graph.node("Add", &[&erf, &one], vec![]);
    let product = graph.node("Mul", &[x, &shifted], vec![]);
    graph.node("Mul", &[&product, &half], vec![])
}

/// Appends the encoder's and head's nodes and initializers to `graph`; the last node writes
/// `logits`.
pub(super) fn emit(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    spec: &EncoderGraph,
    opset: i64,
) -> Result<(), ExportError> {
    let config = spec.config;
    let prefix = spec.prefix;
    let epsilon = config.layer_norm_eps as f32;
    let weight = |graph: &mut GraphBuilder, name: &str, transpose: bool| {
        initializer(graph, parameters, name, transpose)
    };
    let linear = |graph: &mut GraphBuilder, input: &str, prefix: &str| {
        linear(graph, parameters, input, prefix)
    };
    let layer_norm = |graph: &mut GraphBuilder, input: &str, prefix: &str| {
        layer_norm(graph, parameters, input, prefix, epsilon)
    };

    // Embeddings.
    let word = weight(
        graph,
        &format!("{prefix}.embeddings.word_embeddings.weight"),
        false,
    )?;
    let position = weight(
        graph,
        &format!("{prefix}.embeddings.position_embeddings.weight"),
        false,
    )?;
    let token_type = weight(
        graph,
        &format!("{prefix}.embeddings.token_type_embeddings.weight"),
        false,
    )?;
    let words = graph.node("Gather", &[&word, "input_ids"], vec![]);
    let types = if spec.token_types {
        graph.node("Gather", &[&token_type, "token_type_ids"], vec![])
    } else {
        // One token type: its row, broadcast over every token.
        let type_zero = graph.int_tensor("const_token_type_zero", &[], &[0]);
        graph.node("Gather", &[&token_type, &type_zero], vec![])
    };
    let zero = graph.int_tensor("const_zero", &[], &[0]);
    let one = graph.int_tensor("const_one", &[], &[1]);
    let position_ids = match spec.positions {
        PositionIds::FromZero => {
            let shape = graph.node("Shape", &["input_ids"], vec![]);
            let one_index = graph.int_tensor("const_index_1", &[], &[1]);
            let seq_len = graph.node(
                "Gather",
                &[&shape, &one_index],
                vec![attribute_int("axis", 0)],
            );
            graph.node("Range", &[&zero, &seq_len, &one], vec![])
        }
        PositionIds::AfterPadding { padding_idx } => {
            // cumsum(ids ≠ pad) · (ids ≠ pad) + pad, as transformers'
            // create_position_ids_from_input_ids.
            let pad = graph.int_tensor("const_padding_idx", &[], &[i64::from(padding_idx)]);
            let is_pad = graph.node("Equal", &["input_ids", &pad], vec![]);
            let real = graph.node("Not", &[&is_pad], vec![]);
            let real = graph.node(
                "Cast",
                &[&real],
                vec![attribute_int("to", DataType::INT64 as i64)],
            );
            let counted = graph.node("CumSum", &[&real, &one], vec![]);
            let counted = graph.node("Mul", &[&counted, &real], vec![]);
            graph.node("Add", &[&counted, &pad], vec![])
        }
    };
    let positioned = graph.node("Gather", &[&position, &position_ids], vec![]);
    let summed = graph.node("Add", &[&words, &types], vec![]);
    let summed = graph.node("Add", &[&summed, &positioned], vec![]);
    let mut hidden = layer_norm(graph, &summed, &format!("{prefix}.embeddings.LayerNorm"))?;
    if config.embedding_width() != config.hidden_size {
        hidden = linear(graph, &hidden, &format!("{prefix}.embeddings_project"))?;
    }

    // Mask bias [b, 1, 1, s]: 0 where attended, the float32 minimum where padded.
    let (_, mask_bias) = super::padding_bias(graph, f32::MIN);
    let one_float = graph.float_tensor("const_one_float", &[], &[1.0]);

    let heads = config.num_attention_heads as i64;
    let head_size = config.head_size() as i64;
    let split_shape = graph.int_tensor("const_split_heads", &[4], &[0, 0, heads, head_size]);
    let merge_shape = graph.int_tensor(
        "const_merge_heads",
        &[3],
        &[0, 0, config.hidden_size as i64],
    );
    let scale = graph.float_tensor(
        "const_attention_scale",
        &[],
        &[1.0 / (head_size as f32).sqrt()],
    );
    let half = graph.float_tensor("const_half", &[], &[0.5]);
    for layer in 0..config.num_hidden_layers {
        let prefix = format!("{prefix}.encoder.layer.{layer}");
        let split = |graph: &mut GraphBuilder, x: &str, perm: &[i64]| {
            let reshaped = graph.node("Reshape", &[x, &split_shape], vec![]);
            graph.node(
                "Transpose",
                &[&reshaped],
                vec![attribute_ints("perm", perm)],
            )
        };
        let query = linear(graph, &hidden, &format!("{prefix}.attention.self.query"))?;
        let key = linear(graph, &hidden, &format!("{prefix}.attention.self.key"))?;
        let value = linear(graph, &hidden, &format!("{prefix}.attention.self.value"))?;
        let query = split(graph, &query, &[0, 2, 1, 3]);
        let key_t = split(graph, &key, &[0, 2, 3, 1]);
        let value = split(graph, &value, &[0, 2, 1, 3]);
        let context = super::attention(
            graph,
            [&query, &key_t, &value],
            &scale,
            &mask_bias,
            &merge_shape,
        );
        let projected = linear(graph, &context, &format!("{prefix}.attention.output.dense"))?;
        let residual = graph.node("Add", &[&projected, &hidden], vec![]);
        let attended = layer_norm(
            graph,
            &residual,
            &format!("{prefix}.attention.output.LayerNorm"),
        )?;

        let inner = linear(graph, &attended, &format!("{prefix}.intermediate.dense"))?;
        let activated = match config.hidden_act {
            HiddenAct::Gelu => gelu_erf(graph, &inner),
            HiddenAct::GeluNew => {
                let approximate = {
                    let mut attribute = AttributeProto::new();
                    attribute.name = "approximate".into();
                    attribute.type_ = AttributeType::STRING.into();
                    attribute.s = b"tanh".to_vec();
                    attribute
                };
                if opset >= 20 {
                    graph.node("Gelu", &[&inner], vec![approximate])
                } else {
                    // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
                    let cube =
                        graph.float_tensor(&format!("const_gelu_cube_{layer}"), &[], &[0.044715]);
                    let root = graph.float_tensor(
                        &format!("const_gelu_root_{layer}"),
                        &[],
                        &[(2.0 / std::f32::consts::PI).sqrt()],
                    );
                    let x2 = graph.node("Mul", &[&inner, &inner], vec![]);
                    let x3 = graph.node("Mul", &[&x2, &inner], vec![]);
                    let term = graph.node("Mul", &[&x3, &cube], vec![]);
                    let sum = graph.node("Add", &[&inner, &term], vec![]);
                    let scaled = graph.node("Mul", &[&sum, &root], vec![]);
                    let tanh = graph.node("Tanh", &[&scaled], vec![]);
                    let shifted = graph.node("Add", &[&tanh, &one_float], vec![]);
                    let product = graph.node("Mul", &[&inner, &shifted], vec![]);
                    graph.node("Mul", &[&product, &half], vec![])
                }
            }
            HiddenAct::Relu => graph.node("Relu", &[&inner], vec![]),
        };
        let output = linear(graph, &activated, &format!("{prefix}.output.dense"))?;
        let residual = graph.node("Add", &[&output, &attended], vec![]);
        hidden = layer_norm(graph, &residual, &format!("{prefix}.output.LayerNorm"))?;
    }

    // The head on the first token (dropout is the identity at inference).
    let cls_index = graph.int_tensor("const_cls_index", &[], &[0]);
    let cls = graph.node(
        "Gather",
        &[&hidden, &cls_index],
        vec![attribute_int("axis", 1)],
    );
    match spec.head {
        Head::Pooler => {
            let pooled = linear(graph, &cls, &format!("{prefix}.pooler.dense"))?;
            let pooled = graph.node("Tanh", &[&pooled], vec![]);
            linear(graph, &pooled, "classifier")?;
        }
        Head::Classification(activation) => {
            let dense = linear(graph, &cls, "classifier.dense")?;
            let activated = match activation {
                HeadActivation::Tanh => graph.node("Tanh", &[&dense], vec![]),
                HeadActivation::Gelu => gelu_erf(graph, &dense),
            };
            linear(graph, &activated, "classifier.out_proj")?;
        }
    }
    // The classifier's bias Add is the graph's output.
    if let Some(last) = graph.nodes.last_mut() {
        last.output = vec!["logits".into()];
    }

    Ok(())
}
