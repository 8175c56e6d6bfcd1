//! ONNX export of the cross-encoder: the same computation as the candle model, op for op, with
//! every weight as an initializer. Inputs `input_ids`, `attention_mask` and, for families
//! with segments, `token_type_ids` (int64, dynamic batch and sequence axes); output `logits`
//! `[batch, num_labels]`.
//!
//! This module holds the graph builder and the model wrapper; `bert.rs` emits the encoder
//! that BERT, XLM-RoBERTa and ELECTRA share, told by the family interface how each differs
//! (prefix, positions, token types, head).

use std::collections::HashMap;

use candle_core::Tensor;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

use crosstrain_model::CrossEncoder;

mod bert;

use bert::{EncoderGraph, Head};

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
        // A named constant is one initializer, however many emitters ask for it.
        if self.initializers.iter().any(|tensor| tensor.name == name) {
            return name.to_string();
        }
        let mut tensor = TensorProto::new();
        tensor.name = name.into();
        tensor.dims = dims.to_vec();
        tensor.data_type = DataType::FLOAT as i32;
        tensor.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(tensor);
        name.to_string()
    }

    fn int_tensor(&mut self, name: &str, dims: &[i64], values: &[i64]) -> String {
        // A named constant is one initializer, however many emitters ask for it.
        if self.initializers.iter().any(|tensor| tensor.name == name) {
            return name.to_string();
        }
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
    let parameters: HashMap<String, Tensor> = model
        .named_parameters()
        .into_iter()
        .map(|(name, var)| (name, var.as_tensor().clone()))
        .collect();
    let mut graph = GraphBuilder::new();

    // Every family so far is BERT's encoder; the family says how it differs.
    let family = model.family();
    let spec = EncoderGraph {
        config: model.config().bert_config(),
        prefix: family.tensor_names().prefix,
        positions: model.config().position_ids(),
        token_types: family.takes_token_type_ids(),
        head: match model.config().head_activation() {
            None => Head::Pooler,
            Some(activation) => Head::Classification(activation),
        },
    };
    bert::emit(&mut graph, &parameters, &spec, opset)?;

    let mut proto = GraphProto::new();
    proto.name = "crosstrain_cross_encoder".into();
    proto.node = graph.nodes;
    proto.initializer = graph.initializers;
    let dynamic = [Err("batch"), Err("sequence")];
    let mut inputs = vec!["input_ids", "attention_mask"];
    if model.family().takes_token_type_ids() {
        inputs.push("token_type_ids");
    }
    proto.input = inputs
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
