//! The graph of DeBERTa-v2, as `crosstrain_model::deberta_v2` computes it: word embeddings
//! (plus absolute positions and token types where the config has them), LayerNorm, zeroed
//! padding; post-norm layers of disentangled attention (the content scores plus the
//! content→position and position→content scores gathered from products with the relative
//! table at each pair's row) and BERT's feed-forward block; the `ContextPooler` (dense →
//! activation on the first token) and the classifier.
//!
//! Each pair's relative row depends only on its distance, so the graph carries one row per
//! distance, computed by the same function as the candle model (transformers' log buckets in
//! f32), and gathers it at `i − j`: inputs up to `max_position_embeddings` tokens.

use std::collections::HashMap;

use candle_core::Tensor;
use crosstrain_model::bert::HiddenAct;
use crosstrain_model::deberta_v2::relative_position::RelativePositions;
use crosstrain_model::deberta_v2::DebertaV2Config;

use super::bert::gelu_erf;
use super::{attribute_int, attribute_ints, initializer, ExportError, GraphBuilder};

/// The activation `activation` of `x`.
fn activate(graph: &mut GraphBuilder, x: &str, activation: HiddenAct) -> String {
    match activation {
        HiddenAct::Gelu => gelu_erf(graph, x),
        HiddenAct::GeluNew => {
            // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
            let cube_factor = graph.float_tensor("const_gelu_cube", &[], &[0.044715]);
            let root = graph.float_tensor(
                "const_gelu_root",
                &[],
                &[(2.0 / std::f32::consts::PI).sqrt()],
            );
            let one = graph.float_tensor("const_one_float", &[], &[1.0]);
            let half = graph.float_tensor("const_half", &[], &[0.5]);
            let square = graph.node("Mul", &[x, x], vec![]);
            let cube = graph.node("Mul", &[&square, x], vec![]);
            let cube = graph.node("Mul", &[&cube, &cube_factor], vec![]);
            let inner = graph.node("Add", &[x, &cube], vec![]);
            let inner = graph.node("Mul", &[&inner, &root], vec![]);
            let tanh = graph.node("Tanh", &[&inner], vec![]);
            let shifted = graph.node("Add", &[&tanh, &one], vec![]);
            let product = graph.node("Mul", &[x, &shifted], vec![]);
            graph.node("Mul", &[&product, &half], vec![])
        }
        HiddenAct::Relu => graph.node("Relu", &[x], vec![]),
    }
}

/// Appends the network's nodes and initializers to `graph`; the last node writes `logits`.
pub(super) fn emit(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    config: &DebertaV2Config,
) -> Result<(), ExportError> {
    let epsilon = config.layer_norm_eps as f32;
    let heads = config.num_attention_heads as i64;
    let head_size = config.head_size() as i64;
    let linear = |graph: &mut GraphBuilder, input: &str, prefix: &str| {
        super::linear(graph, parameters, input, prefix)
    };
    let layer_norm = |graph: &mut GraphBuilder, input: &str, prefix: &str| {
        super::layer_norm(graph, parameters, input, prefix, epsilon)
    };

    // Sequence length and positions.
    let super::Sequence { positions, .. } = super::sequence(graph);
    let zero = graph.int_tensor("const_zero", &[], &[0]);
    let one = graph.int_tensor("const_one", &[], &[1]);

    // Embeddings.
    let word = initializer(
        graph,
        parameters,
        "deberta.embeddings.word_embeddings.weight",
        false,
    )?;
    let mut embedded = graph.node("Gather", &[&word, "input_ids"], vec![]);
    if config.position_biased_input {
        let table = initializer(
            graph,
            parameters,
            "deberta.embeddings.position_embeddings.weight",
            false,
        )?;
        let positioned = graph.node("Gather", &[&table, &positions], vec![]);
        embedded = graph.node("Add", &[&embedded, &positioned], vec![]);
    }
    if config.type_vocab_size > 0 {
        let table = initializer(
            graph,
            parameters,
            "deberta.embeddings.token_type_embeddings.weight",
            false,
        )?;
        let types = graph.node("Gather", &[&table, "token_type_ids"], vec![]);
        embedded = graph.node("Add", &[&embedded, &types], vec![]);
    }
    if config.embedding_width() != config.hidden_size {
        embedded = super::product(
            graph,
            parameters,
            &embedded,
            "deberta.embeddings.embed_proj",
        )?;
    }
    let normed = layer_norm(graph, &embedded, "deberta.embeddings.LayerNorm")?;
    let (mask, bias) = super::padding_bias(graph, f32::MIN);
    let last_axis = graph.int_tensor("const_last_axis", &[1], &[-1]);
    let token_mask = graph.node("Unsqueeze", &[&mask, &last_axis], vec![]);
    let mut hidden = graph.node("Mul", &[&normed, &token_mask], vec![]);

    // Relative rows [s, s] (and transposed, for the key's view), and the table.
    let relative = if config.relative_attention {
        let longest = config.max_position_embeddings;
        let positions_spec = RelativePositions {
            span: config.attention_span(),
            buckets: (config.position_buckets > 0).then_some(config.position_buckets as usize),
            max_position: config.max_relative_positions(),
        };
        // Row of distance `d` at `d + longest − 1`.
        let by_distance: Vec<i64> = (0..2 * longest - 1)
            .map(|offset| {
                // `row(query, key)` with `query − key = offset − (longest − 1)`.
                let (query, key) = if offset >= longest - 1 {
                    (offset - (longest - 1), 0)
                } else {
                    (0, longest - 1 - offset)
                };
                positions_spec.row(query, key) as i64
            })
            .collect();
        let by_distance = graph.int_tensor(
            "const_relative_rows",
            &[by_distance.len() as i64],
            &by_distance,
        );
        let rows = graph.node("Unsqueeze", &[&positions, &one], vec![]);
        let columns = graph.node("Unsqueeze", &[&positions, &zero], vec![]);
        let distance = graph.node("Sub", &[&rows, &columns], vec![]);
        let offset = graph.int_tensor("const_relative_offset", &[], &[longest as i64 - 1]);
        let distance = graph.node("Add", &[&distance, &offset], vec![]);
        let pair_rows = graph.node("Gather", &[&by_distance, &distance], vec![]);
        let key_rows = graph.node(
            "Transpose",
            &[&pair_rows],
            vec![attribute_ints("perm", &[1, 0])],
        );
        let table = initializer(
            graph,
            parameters,
            "deberta.encoder.rel_embeddings.weight",
            false,
        )?;
        let table = if config.normalises_relative_embeddings() {
            layer_norm(graph, &table, "deberta.encoder.LayerNorm")?
        } else {
            table
        };
        Some((pair_rows, key_rows, table))
    } else {
        None
    };

    let split_shape = graph.int_tensor("const_split_heads", &[4], &[0, 0, heads, head_size]);
    let table_shape = graph.int_tensor("const_split_table", &[3], &[0, heads, head_size]);
    let merge_shape = graph.int_tensor("const_merge_heads", &[3], &[0, 0, heads * head_size]);
    let scale = graph.float_tensor(
        "const_attention_scale",
        &[],
        &[(1.0 / config.score_scale()) as f32],
    );
    for layer in 0..config.num_hidden_layers {
        let prefix = format!("deberta.encoder.layer.{layer}");
        let attention = format!("{prefix}.attention.self");
        // [b, heads, s, d]
        let split = |graph: &mut GraphBuilder, projected: &str| {
            let reshaped = graph.node("Reshape", &[projected, &split_shape], vec![]);
            graph.node(
                "Transpose",
                &[&reshaped],
                vec![attribute_ints("perm", &[0, 2, 1, 3])],
            )
        };
        let query_projected = linear(graph, &hidden, &format!("{attention}.query_proj"))?;
        let query = split(graph, &query_projected);
        let key_projected = linear(graph, &hidden, &format!("{attention}.key_proj"))?;
        let key = split(graph, &key_projected);
        let value_projected = linear(graph, &hidden, &format!("{attention}.value_proj"))?;
        let value = split(graph, &value_projected);
        let key_t = graph.node(
            "Transpose",
            &[&key],
            vec![attribute_ints("perm", &[0, 1, 3, 2])],
        );
        let mut scores = graph.node("MatMul", &[&query, &key_t], vec![]);
        if let Some((pair_rows, key_rows, table)) = &relative {
            let scores_shape = graph.node("Shape", &[&scores], vec![]);
            // The table through a projection, as [heads, d, 2span].
            let project_table = |graph: &mut GraphBuilder, name: &str| {
                let projected = linear(graph, table, &format!("{attention}.{name}"))?;
                let reshaped = graph.node("Reshape", &[&projected, &table_shape], vec![]);
                Ok::<_, ExportError>(graph.node(
                    "Transpose",
                    &[&reshaped],
                    vec![attribute_ints("perm", &[1, 2, 0])],
                ))
            };
            if config.content_to_position() {
                let name = if config.share_att_key {
                    "key_proj"
                } else {
                    "pos_key_proj"
                };
                let position_keys = project_table(graph, name)?;
                let products = graph.node("MatMul", &[&query, &position_keys], vec![]);
                let index = graph.node("Expand", &[pair_rows, &scores_shape], vec![]);
                let gathered = graph.node(
                    "GatherElements",
                    &[&products, &index],
                    vec![attribute_int("axis", -1)],
                );
                scores = graph.node("Add", &[&scores, &gathered], vec![]);
            }
            if config.position_to_content() {
                let name = if config.share_att_key {
                    "query_proj"
                } else {
                    "pos_query_proj"
                };
                let position_queries = project_table(graph, name)?;
                // [b, heads, s (key), 2span], gathered at each (key, query) pair's row.
                let products = graph.node("MatMul", &[&key, &position_queries], vec![]);
                let index = graph.node("Expand", &[key_rows, &scores_shape], vec![]);
                let gathered = graph.node(
                    "GatherElements",
                    &[&products, &index],
                    vec![attribute_int("axis", -1)],
                );
                let gathered = graph.node(
                    "Transpose",
                    &[&gathered],
                    vec![attribute_ints("perm", &[0, 1, 3, 2])],
                );
                scores = graph.node("Add", &[&scores, &gathered], vec![]);
            }
        }
        let scores = graph.node("Mul", &[&scores, &scale], vec![]);
        let scores = graph.node("Add", &[&scores, &bias], vec![]);
        let probabilities = graph.node("Softmax", &[&scores], vec![attribute_int("axis", -1)]);
        let context = graph.node("MatMul", &[&probabilities, &value], vec![]);
        let context = graph.node(
            "Transpose",
            &[&context],
            vec![attribute_ints("perm", &[0, 2, 1, 3])],
        );
        let context = graph.node("Reshape", &[&context, &merge_shape], vec![]);
        let output = linear(graph, &context, &format!("{prefix}.attention.output.dense"))?;
        let residual = graph.node("Add", &[&output, &hidden], vec![]);
        let attended = layer_norm(
            graph,
            &residual,
            &format!("{prefix}.attention.output.LayerNorm"),
        )?;

        let inner = linear(graph, &attended, &format!("{prefix}.intermediate.dense"))?;
        let activated = activate(graph, &inner, config.hidden_act);
        let output = linear(graph, &activated, &format!("{prefix}.output.dense"))?;
        let residual = graph.node("Add", &[&output, &attended], vec![]);
        hidden = layer_norm(graph, &residual, &format!("{prefix}.output.LayerNorm"))?;
    }

    let first_index = graph.int_tensor("const_cls_index", &[], &[0]);
    let first = graph.node(
        "Gather",
        &[&hidden, &first_index],
        vec![attribute_int("axis", 1)],
    );
    let pooled = linear(graph, &first, "pooler.dense")?;
    let pooled = activate(graph, &pooled, config.pooler_hidden_act);
    linear(graph, &pooled, "classifier")?;
    // The classifier's bias Add is the graph's output.
    if let Some(last) = graph.nodes.last_mut() {
        last.output = vec!["logits".into()];
    }
    Ok(())
}
