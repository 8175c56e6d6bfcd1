//! BERT's graph: embeddings (word + position + token type, LayerNorm), post-norm encoder
//! layers, the pooler on `[CLS]` and the classifier, as `crosstrain_model::bert` computes them.

use std::collections::HashMap;

use candle_core::Tensor;
use crosstrain_model::bert::{BertConfig, HiddenAct};

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::AttributeProto;

use super::{
    attribute_int, attribute_ints, initializer, layer_norm, linear, ExportError, GraphBuilder,
};

/// Appends BERT's nodes and initializers to `graph`; the last node writes `logits`.
pub(super) fn emit(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    config: &BertConfig,
    opset: i64,
) -> Result<(), ExportError> {
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
    let word = weight(graph, "bert.embeddings.word_embeddings.weight", false)?;
    let position = weight(graph, "bert.embeddings.position_embeddings.weight", false)?;
    let token_type = weight(graph, "bert.embeddings.token_type_embeddings.weight", false)?;
    let words = graph.node("Gather", &[&word, "input_ids"], vec![]);
    let types = graph.node("Gather", &[&token_type, "token_type_ids"], vec![]);
    let shape = graph.node("Shape", &["input_ids"], vec![]);
    let one_index = graph.int_tensor("const_index_1", &[], &[1]);
    let seq_len = graph.node(
        "Gather",
        &[&shape, &one_index],
        vec![attribute_int("axis", 0)],
    );
    let zero = graph.int_tensor("const_zero", &[], &[0]);
    let one = graph.int_tensor("const_one", &[], &[1]);
    let positions = graph.node("Range", &[&zero, &seq_len, &one], vec![]);
    let positioned = graph.node("Gather", &[&position, &positions], vec![]);
    let summed = graph.node("Add", &[&words, &types], vec![]);
    let summed = graph.node("Add", &[&summed, &positioned], vec![]);
    let mut hidden = layer_norm(graph, &summed, "bert.embeddings.LayerNorm")?;

    // Mask bias [b, 1, 1, s]: 0 where attended, the float32 minimum where padded.
    let mask = graph.node(
        "Cast",
        &["attention_mask"],
        vec![attribute_int("to", DataType::FLOAT as i64)],
    );
    let one_float = graph.float_tensor("const_one_float", &[], &[1.0]);
    let lowest = graph.float_tensor("const_lowest", &[], &[f32::MIN]);
    let inverted = graph.node("Sub", &[&one_float, &mask], vec![]);
    let bias = graph.node("Mul", &[&inverted, &lowest], vec![]);
    let axes = graph.int_tensor("const_mask_axes", &[2], &[1, 2]);
    let mask_bias = graph.node("Unsqueeze", &[&bias, &axes], vec![]);

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
    let sqrt_two = graph.float_tensor("const_sqrt_two", &[], &[std::f32::consts::SQRT_2]);
    for layer in 0..config.num_hidden_layers {
        let prefix = format!("bert.encoder.layer.{layer}");
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
        let scores = graph.node("MatMul", &[&query, &key_t], vec![]);
        let scores = graph.node("Mul", &[&scores, &scale], vec![]);
        let scores = graph.node("Add", &[&scores, &mask_bias], vec![]);
        let probabilities = graph.node("Softmax", &[&scores], vec![attribute_int("axis", -1)]);
        let context = graph.node("MatMul", &[&probabilities, &value], vec![]);
        let context = graph.node(
            "Transpose",
            &[&context],
            vec![attribute_ints("perm", &[0, 2, 1, 3])],
        );
        let context = graph.node("Reshape", &[&context, &merge_shape], vec![]);
        let projected = linear(graph, &context, &format!("{prefix}.attention.output.dense"))?;
        let residual = graph.node("Add", &[&projected, &hidden], vec![]);
        let attended = layer_norm(
            graph,
            &residual,
            &format!("{prefix}.attention.output.LayerNorm"),
        )?;

        let inner = linear(graph, &attended, &format!("{prefix}.intermediate.dense"))?;
        let activated = match config.hidden_act {
            HiddenAct::Gelu => {
                // 0.5·x·(1 + erf(x/√2)), as candle's gelu_erf.
                let scaled = graph.node("Div", &[&inner, &sqrt_two], vec![]);
                let erf = graph.node("Erf", &[&scaled], vec![]);
                let shifted = graph.node("Add", &[&erf, &one_float], vec![]);
                let product = graph.node("Mul", &[&inner, &shifted], vec![]);
                graph.node("Mul", &[&product, &half], vec![])
            }
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

    // Pooler on [CLS], then the classifier (dropout is the identity at inference).
    let cls_index = graph.int_tensor("const_cls_index", &[], &[0]);
    let cls = graph.node(
        "Gather",
        &[&hidden, &cls_index],
        vec![attribute_int("axis", 1)],
    );
    let pooled = linear(graph, &cls, "bert.pooler.dense")?;
    let pooled = graph.node("Tanh", &[&pooled], vec![]);
    linear(graph, &pooled, "classifier")?;
    // The classifier's bias Add is the graph's output.
    if let Some(last) = graph.nodes.last_mut() {
        last.output = vec!["logits".into()];
    }

    Ok(())
}
