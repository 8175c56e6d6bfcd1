//! ONNX export of the cross-encoder: the same computation as the candle model, op for op, with
//! every weight as an initializer. Inputs `input_ids`, `attention_mask`, `token_type_ids`
//! (int64, dynamic batch and sequence axes); output `logits` `[batch, num_labels]`.

use std::collections::HashMap;

use candle_core::Tensor;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

use crate::model::config::HiddenAct;
use crate::model::CrossEncoder;

/// Lowest opset we emit (LayerNormalization appeared in 17).
pub const MIN_OPSET: i64 = 17;

/// An export failure.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The opset is too old for the ops we use.
    #[error("opset {0} is not supported; use {MIN_OPSET} or newer")]
    Opset(i64),
    /// A parameter is missing from the model.
    #[error("the model has no parameter {0}")]
    MissingParameter(String),
    /// Reading a tensor failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// Serialising failed.
    #[error("serialising the ONNX model: {0}")]
    Protobuf(String),
}

/// Builds the graph node by node.
struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
}

fn attribute_int(name: &str, value: i64) -> AttributeProto {
    let mut attribute = AttributeProto::new();
    attribute.name = name.into();
    attribute.type_ = AttributeType::INT.into();
    attribute.i = value;
    attribute
}

fn attribute_ints(name: &str, values: &[i64]) -> AttributeProto {
    let mut attribute = AttributeProto::new();
    attribute.name = name.into();
    attribute.type_ = AttributeType::INTS.into();
    attribute.ints = values.to_vec();
    attribute
}

fn attribute_float(name: &str, value: f32) -> AttributeProto {
    let mut attribute = AttributeProto::new();
    attribute.name = name.into();
    attribute.type_ = AttributeType::FLOAT.into();
    attribute.f = value;
    attribute
}

impl GraphBuilder {
    fn new() -> Self {
        Self {
            nodes: Vec::new(),
            initializers: Vec::new(),
            counter: 0,
        }
    }

    /// Adds a node with one output and returns the output's name.
    fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        self.counter += 1;
        let output = format!("{}_{}", op.to_lowercase(), self.counter);
        let mut node = NodeProto::new();
        node.op_type = op.into();
        node.name = format!("{op}_{}", self.counter);
        node.input = inputs.iter().map(|s| s.to_string()).collect();
        node.output = vec![output.clone()];
        node.attribute = attributes;
        self.nodes.push(node);
        output
    }

    fn float_tensor(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        let mut tensor = TensorProto::new();
        tensor.name = name.into();
        tensor.dims = dims.to_vec();
        tensor.data_type = DataType::FLOAT as i32;
        tensor.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(tensor);
        name.to_string()
    }

    fn int_tensor(&mut self, name: &str, dims: &[i64], values: &[i64]) -> String {
        let mut tensor = TensorProto::new();
        tensor.name = name.into();
        tensor.dims = dims.to_vec();
        tensor.data_type = DataType::INT64 as i32;
        tensor.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(tensor);
        name.to_string()
    }
}

fn value_info(name: &str, element: DataType, dims: &[Result<i64, &str>]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for dim in dims {
        let mut dimension = tensor_shape_proto::Dimension::new();
        dimension.value = Some(match dim {
            Ok(size) => tensor_shape_proto::dimension::Value::DimValue(*size),
            Err(param) => tensor_shape_proto::dimension::Value::DimParam(param.to_string()),
        });
        shape.dim.push(dimension);
    }
    let mut tensor_type = type_proto::Tensor::new();
    tensor_type.elem_type = element as i32;
    tensor_type.shape = Some(shape).into();
    let mut type_ = TypeProto::new();
    type_.value = Some(type_proto::Value::TensorType(tensor_type));
    let mut info = ValueInfoProto::new();
    info.name = name.into();
    info.type_ = Some(type_).into();
    info
}

/// A parameter as an initializer; Linear weights `[out, in]` are stored transposed for MatMul.
fn initializer(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    name: &str,
    transpose: bool,
) -> Result<String, ExportError> {
    let tensor = parameters
        .get(name)
        .ok_or_else(|| ExportError::MissingParameter(name.to_string()))?;
    let tensor = if transpose {
        tensor.t()?.contiguous()?
    } else {
        tensor.clone()
    };
    let tensor = tensor
        .to_dtype(candle_core::DType::F32)?
        .to_device(&candle_core::Device::Cpu)?;
    let dims: Vec<i64> = tensor.dims().iter().map(|&d| d as i64).collect();
    let values: Vec<f32> = tensor.flatten_all()?.to_vec1()?;
    Ok(graph.float_tensor(name, &dims, &values))
}

/// `x·Wᵀ + b` for the Linear layer `prefix`.
fn linear(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    input: &str,
    prefix: &str,
) -> Result<String, ExportError> {
    let w = initializer(graph, parameters, &format!("{prefix}.weight"), true)?;
    let b = initializer(graph, parameters, &format!("{prefix}.bias"), false)?;
    let product = graph.node("MatMul", &[input, &w], vec![]);
    Ok(graph.node("Add", &[&product, &b], vec![]))
}

/// LayerNormalization over the last axis with the layer `prefix`'s weight and bias.
fn layer_norm(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    input: &str,
    prefix: &str,
    epsilon: f32,
) -> Result<String, ExportError> {
    let gamma = initializer(graph, parameters, &format!("{prefix}.weight"), false)?;
    let beta = initializer(graph, parameters, &format!("{prefix}.bias"), false)?;
    Ok(graph.node(
        "LayerNormalization",
        &[input, &gamma, &beta],
        vec![
            attribute_int("axis", -1),
            attribute_float("epsilon", epsilon),
        ],
    ))
}

/// The serialised ONNX model of `model` at `opset`.
pub fn export_onnx(model: &CrossEncoder, opset: i64) -> Result<Vec<u8>, ExportError> {
    if opset < MIN_OPSET {
        return Err(ExportError::Opset(opset));
    }
    let config = model.config();
    let parameters: HashMap<String, Tensor> = model
        .named_parameters()
        .into_iter()
        .map(|(name, var)| (name, var.as_tensor().clone()))
        .collect();
    let mut graph = GraphBuilder::new();

    let epsilon = config.layer_norm_eps as f32;
    let weight = |graph: &mut GraphBuilder, name: &str, transpose: bool| {
        initializer(graph, &parameters, name, transpose)
    };
    let linear = |graph: &mut GraphBuilder, input: &str, prefix: &str| {
        linear(graph, &parameters, input, prefix)
    };
    let layer_norm = |graph: &mut GraphBuilder, input: &str, prefix: &str| {
        layer_norm(graph, &parameters, input, prefix, epsilon)
    };

    // Embeddings.
    let word = weight(&mut graph, "bert.embeddings.word_embeddings.weight", false)?;
    let position = weight(
        &mut graph,
        "bert.embeddings.position_embeddings.weight",
        false,
    )?;
    let token_type = weight(
        &mut graph,
        "bert.embeddings.token_type_embeddings.weight",
        false,
    )?;
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
    let mut hidden = layer_norm(&mut graph, &summed, "bert.embeddings.LayerNorm")?;

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
        let query = linear(
            &mut graph,
            &hidden,
            &format!("{prefix}.attention.self.query"),
        )?;
        let key = linear(&mut graph, &hidden, &format!("{prefix}.attention.self.key"))?;
        let value = linear(
            &mut graph,
            &hidden,
            &format!("{prefix}.attention.self.value"),
        )?;
        let query = split(&mut graph, &query, &[0, 2, 1, 3]);
        let key_t = split(&mut graph, &key, &[0, 2, 3, 1]);
        let value = split(&mut graph, &value, &[0, 2, 1, 3]);
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
        let projected = linear(
            &mut graph,
            &context,
            &format!("{prefix}.attention.output.dense"),
        )?;
        let residual = graph.node("Add", &[&projected, &hidden], vec![]);
        let attended = layer_norm(
            &mut graph,
            &residual,
            &format!("{prefix}.attention.output.LayerNorm"),
        )?;

        let inner = linear(
            &mut graph,
            &attended,
            &format!("{prefix}.intermediate.dense"),
        )?;
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
        let output = linear(&mut graph, &activated, &format!("{prefix}.output.dense"))?;
        let residual = graph.node("Add", &[&output, &attended], vec![]);
        hidden = layer_norm(&mut graph, &residual, &format!("{prefix}.output.LayerNorm"))?;
    }

    // Pooler on [CLS], then the classifier (dropout is the identity at inference).
    let cls_index = graph.int_tensor("const_cls_index", &[], &[0]);
    let cls = graph.node(
        "Gather",
        &[&hidden, &cls_index],
        vec![attribute_int("axis", 1)],
    );
    let pooled = linear(&mut graph, &cls, "bert.pooler.dense")?;
    let pooled = graph.node("Tanh", &[&pooled], vec![]);
    linear(&mut graph, &pooled, "classifier")?;
    // The classifier's bias Add is the graph's output.
    if let Some(last) = graph.nodes.last_mut() {
        last.output = vec!["logits".into()];
    }

    let mut proto = GraphProto::new();
    proto.name = "crosstrain_cross_encoder".into();
    proto.node = graph.nodes;
    proto.initializer = graph.initializers;
    let dynamic = [Err("batch"), Err("sequence")];
    proto.input = ["input_ids", "attention_mask", "token_type_ids"]
        .iter()
        .map(|name| value_info(name, DataType::INT64, &dynamic))
        .collect();
    proto.output = vec![value_info(
        "logits",
        DataType::FLOAT,
        &[Err("batch"), Ok(model.num_labels() as i64)],
    )];
    let mut model_proto = ModelProto::new();
    model_proto.ir_version = 8;
    model_proto.producer_name = "crosstrain".into();
    model_proto.producer_version = env!("CARGO_PKG_VERSION").into();
    let mut opset_id = OperatorSetIdProto::new();
    opset_id.domain = String::new();
    opset_id.version = opset;
    model_proto.opset_import = vec![opset_id];
    model_proto.graph = Some(proto).into();
    model_proto
        .write_to_bytes()
        .map_err(|e| ExportError::Protobuf(e.to_string()))
}
