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
mod deberta_v2;
mod decoder;
mod modernbert;

use bert::{EncoderGraph, Head};

/// Lowest opset we emit (LayerNormalization appeared in 17).
pub const MIN_OPSET: i64 = 17;

/// Newest opset the ONNX Runtime that crosstrain runs (`scripts/fetch-onnxruntime.sh`'s
/// version) loads: a file of a newer opset would be written and then fail to load wherever
/// it is used, so the exporter refuses it.
pub const MAX_OPSET: i64 = 28;

/// An export failure.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The opset is too old for the ops we use, or newer than ONNX Runtime loads.
    #[error("opset {0} is not supported; use {MIN_OPSET} to {MAX_OPSET} (the newest ONNX Runtime \
             {ort} loads)", ort = crate::onnx::runtime::ORT_VERSION)]
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

/// How the weights of the linear layers are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantization {
    /// float32, as trained.
    #[default]
    None,
    /// Dynamic int8 quantization as ONNX Runtime's `quantize_dynamic` does it: int8 weights
    /// with a symmetric scale per output channel for every linear layer of the encoder and
    /// head, activations quantized to uint8 at run time (`DynamicQuantizeLinear` +
    /// `MatMulInteger`, which ONNX Runtime fuses into `DynamicQuantizeMatMul`); embeddings and
    /// norms stay float32. For CPUs with AVX-512 VNNI (or AVX-VNNI), whose `u8 x s8` dot
    /// products do not saturate.
    Int8,
    /// The same weights and scales as [`Quantization::Int8`], stored as uint8 with zero point
    /// 128 (the same real values), for CPUs with AVX2 alone: there ONNX Runtime multiplies
    /// `u8 x s8` with a saturating 16-bit pair sum (`vpmaddubsw`), which can wreck a score
    /// (seen: 0.58 scored as 1.43), while `u8 x u8` takes a widening path that does not saturate.
    /// sentence-transformers' `avx2` configuration likewise stores uint8 weights.
    Uint8Avx2,
}

impl Quantization {
    /// The file name sentence-transformers gives the model in `MODEL/onnx/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Quantization::None => "model.onnx",
            Quantization::Int8 => "model_qint8_avx512_vnni.onnx",
            Quantization::Uint8Avx2 => "model_quint8_avx2.onnx",
        }
    }

    /// Whether the weights are quantized.
    pub fn is_quantized(self) -> bool {
        self != Quantization::None
    }
}

/// Whether this CPU multiplies `u8 x s8` without saturation (AVX-512 VNNI or AVX-VNNI), as
/// [`Quantization::Int8`] files need.
pub fn cpu_has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // ARM's int8 dot products (sdot/udot) do not saturate.
        true
    }
}

/// Builds the graph node by node.
struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
    quantization: Quantization,
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
    fn new(quantization: Quantization) -> Self {
        Self {
            nodes: Vec::new(),
            initializers: Vec::new(),
            counter: 0,
            quantization,
        }
    }

    /// Adds a node with one output and returns the output's name.
    fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        self.node_outputs(op, inputs, 1, attributes).remove(0)
    }

    /// Adds a node with `outputs` outputs and returns their names.
    fn node_outputs(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: usize,
        attributes: Vec<AttributeProto>,
    ) -> Vec<String> {
        self.counter += 1;
        let names: Vec<String> = (0..outputs)
            .map(|i| match i {
                0 => format!("{}_{}", op.to_lowercase(), self.counter),
                i => format!("{}_{}_{i}", op.to_lowercase(), self.counter),
            })
            .collect();
        let mut node = NodeProto::new();
        node.op_type = op.into();
        node.name = format!("{op}_{}", self.counter);
        node.input = inputs.iter().map(|s| s.to_string()).collect();
        node.output = names.clone();
        node.attribute = attributes;
        self.nodes.push(node);
        names
    }

    /// An int8 initializer.
    fn int8_tensor(&mut self, name: &str, dims: &[i64], values: &[i8]) -> String {
        let mut tensor = TensorProto::new();
        tensor.name = name.into();
        tensor.dims = dims.to_vec();
        tensor.data_type = DataType::INT8 as i32;
        tensor.raw_data = values.iter().map(|&v| v as u8).collect();
        self.initializers.push(tensor);
        name.to_string()
    }

    /// A uint8 initializer.
    fn uint8_tensor(&mut self, name: &str, dims: &[i64], values: Vec<u8>) -> String {
        let mut tensor = TensorProto::new();
        tensor.name = name.into();
        tensor.dims = dims.to_vec();
        tensor.data_type = DataType::UINT8 as i32;
        tensor.raw_data = values;
        self.initializers.push(tensor);
        name.to_string()
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

/// `x·Wᵀ + b` for the Linear layer `prefix`, in float32 or, with [`Quantization::Int8`], as
/// a dynamically quantized product.
fn linear(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    input: &str,
    prefix: &str,
) -> Result<String, ExportError> {
    let b = initializer(graph, parameters, &format!("{prefix}.bias"), false)?;
    let product = product(graph, parameters, input, prefix)?;
    Ok(graph.node("Add", &[&product, &b], vec![]))
}

/// `x·Wᵀ` for the Linear layer `prefix` (a bias-free one, or [`linear`]'s product).
fn product(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    input: &str,
    prefix: &str,
) -> Result<String, ExportError> {
    match graph.quantization {
        Quantization::None => {
            let w = initializer(graph, parameters, &format!("{prefix}.weight"), true)?;
            Ok(graph.node("MatMul", &[input, &w], vec![]))
        }
        Quantization::Int8 | Quantization::Uint8Avx2 => {
            quantized_product(graph, parameters, input, prefix)
        }
    }
}

/// The input's positions `0..s` and its length as a 1-D tensor (for slicing position
/// tables), as every family's graph starts.
struct Sequence {
    positions: String,
    length_1d: String,
}

fn sequence(graph: &mut GraphBuilder) -> Sequence {
    let shape = graph.node("Shape", &["input_ids"], vec![]);
    let one_index = graph.int_tensor("const_index_1", &[], &[1]);
    let length = graph.node(
        "Gather",
        &[&shape, &one_index],
        vec![attribute_int("axis", 0)],
    );
    let zero = graph.int_tensor("const_zero", &[], &[0]);
    let one = graph.int_tensor("const_one", &[], &[1]);
    let positions = graph.node("Range", &[&zero, &length, &one], vec![]);
    let zero_1d = graph.int_tensor("const_zero_1d", &[1], &[0]);
    let length_1d = graph.node("Unsqueeze", &[&length, &zero_1d], vec![]);
    Sequence {
        positions,
        length_1d,
    }
}

/// Rotary embedding of `x` (`[.., head_size]`): `x · cos + rotate_half(x) · sin`, with the
/// tables already sliced to the sequence.
fn rotate(graph: &mut GraphBuilder, x: &str, cos: &str, sin: &str, head_size: usize) -> String {
    let zero_1d = graph.int_tensor("const_zero_1d", &[1], &[0]);
    let last_axis = graph.int_tensor("const_last_axis", &[1], &[-1]);
    let half_start = graph.int_tensor("const_rotary_half", &[1], &[(head_size / 2) as i64]);
    let full_end = graph.int_tensor("const_rotary_end", &[1], &[head_size as i64]);
    let first = graph.node("Slice", &[x, &zero_1d, &half_start, &last_axis], vec![]);
    let second = graph.node("Slice", &[x, &half_start, &full_end, &last_axis], vec![]);
    let negated = graph.node("Neg", &[&second], vec![]);
    let rotated = graph.node(
        "Concat",
        &[&negated, &first],
        vec![attribute_int("axis", -1)],
    );
    let cosine = graph.node("Mul", &[x, cos], vec![]);
    let sine = graph.node("Mul", &[&rotated, sin], vec![]);
    graph.node("Add", &[&cosine, &sine], vec![])
}

/// The attention mask as a float `[b, s]` tensor, and the score bias `[b, 1, 1, s]` from it:
/// 0 where attended, `masked` where padded.
fn padding_bias(graph: &mut GraphBuilder, masked: f32) -> (String, String) {
    let mask = graph.node(
        "Cast",
        &["attention_mask"],
        vec![attribute_int("to", DataType::FLOAT as i64)],
    );
    let one_float = graph.float_tensor("const_one_float", &[], &[1.0]);
    let masked = graph.float_tensor("const_masked_score", &[], &[masked]);
    let inverted = graph.node("Sub", &[&one_float, &mask], vec![]);
    let bias = graph.node("Mul", &[&inverted, &masked], vec![]);
    let axes = graph.int_tensor("const_mask_axes", &[2], &[1, 2]);
    let bias = graph.node("Unsqueeze", &[&bias, &axes], vec![]);
    (mask, bias)
}

/// The int8 weights of a Linear `[out, in]`, transposed to `[in, out]` for MatMulInteger,
/// with a symmetric scale per output channel (`max |w| / 127`), and the scales.
pub(crate) fn quantize_per_channel(
    weight: &[f32],
    out: usize,
    inputs: usize,
) -> (Vec<i8>, Vec<f32>) {
    let scales: Vec<f32> = (0..out)
        .map(|o| {
            let max = weight[o * inputs..(o + 1) * inputs]
                .iter()
                .fold(0f32, |m, w| m.max(w.abs()));
            if max > 0.0 {
                max / 127.0
            } else {
                1.0
            }
        })
        .collect();
    let mut quantized = vec![0i8; out * inputs];
    for o in 0..out {
        for i in 0..inputs {
            let q = (weight[o * inputs + i] / scales[o])
                .round()
                .clamp(-127.0, 127.0);
            quantized[i * out + o] = q as i8;
        }
    }
    (quantized, scales)
}

/// `x·Wᵀ` as ONNX Runtime's dynamic quantization writes it: `DynamicQuantizeLinear(x)` →
/// `MatMulInteger(x_q, W_q, x_zero, 0)` → `Cast` → `Mul` by `x_scale · w_scale`.
fn quantized_product(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    input: &str,
    prefix: &str,
) -> Result<String, ExportError> {
    let name = format!("{prefix}.weight");
    let tensor = parameters
        .get(&name)
        .ok_or_else(|| ExportError::MissingParameter(name.clone()))?
        .to_dtype(candle_core::DType::F32)?
        .to_device(&candle_core::Device::Cpu)?;
    let (out, inputs) = tensor.dims2()?;
    let values: Vec<f32> = tensor.flatten_all()?.to_vec1()?;
    let (quantized, scales) = quantize_per_channel(&values, out, inputs);
    let dims = [inputs as i64, out as i64];
    let (w, w_zero) = if graph.quantization == Quantization::Uint8Avx2 {
        // q + 128 with zero point 128: the same real values as int8's q with zero point 0.
        let shifted = quantized
            .iter()
            .map(|&q| (i16::from(q) + 128) as u8)
            .collect();
        (
            graph.uint8_tensor(&format!("{name}_quantized"), &dims, shifted),
            graph.uint8_tensor(&format!("{name}_zero_point"), &[out as i64], vec![128; out]),
        )
    } else {
        (
            graph.int8_tensor(&format!("{name}_quantized"), &dims, &quantized),
            graph.int8_tensor(&format!("{name}_zero_point"), &[out as i64], &vec![0; out]),
        )
    };
    let w_scale = graph.float_tensor(&format!("{name}_scale"), &[out as i64], &scales);
    let quantized_input = graph.node_outputs("DynamicQuantizeLinear", &[input], 3, vec![]);
    let [x_q, x_scale, x_zero] = [
        &quantized_input[0],
        &quantized_input[1],
        &quantized_input[2],
    ];
    let integer = graph.node("MatMulInteger", &[x_q, &w, x_zero, &w_zero], vec![]);
    let float = graph.node(
        "Cast",
        &[&integer],
        vec![attribute_int("to", DataType::FLOAT as i64)],
    );
    let scale = graph.node("Mul", &[x_scale, &w_scale], vec![]);
    Ok(graph.node("Mul", &[&float, &scale], vec![]))
}

/// LayerNormalization over the last axis with the layer `prefix`'s weight and bias.
fn layer_norm(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    input: &str,
    prefix: &str,
    epsilon: f32,
) -> Result<String, ExportError> {
    layer_norm_with(graph, parameters, input, prefix, epsilon, true)
}

/// [`layer_norm`], or without a bias (`has_bias` false: ModernBERT's norms).
fn layer_norm_with(
    graph: &mut GraphBuilder,
    parameters: &HashMap<String, Tensor>,
    input: &str,
    prefix: &str,
    epsilon: f32,
    has_bias: bool,
) -> Result<String, ExportError> {
    let mut inputs = vec![
        input.to_string(),
        initializer(graph, parameters, &format!("{prefix}.weight"), false)?,
    ];
    if has_bias {
        inputs.push(initializer(
            graph,
            parameters,
            &format!("{prefix}.bias"),
            false,
        )?);
    }
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    Ok(graph.node(
        "LayerNormalization",
        &inputs,
        vec![
            attribute_int("axis", -1),
            attribute_float("epsilon", epsilon),
        ],
    ))
}

/// Scaled dot-product attention of `[b, heads, s, d]` queries with the transposed keys
/// `[b, heads, d, s]` and values, the score `bias` added before the softmax, heads merged back
/// to `[b, s, heads·d]` by `merge_shape`.
fn attention(
    graph: &mut GraphBuilder,
    [query, key_t, value]: [&str; 3],
    scale: &str,
    bias: &str,
    merge_shape: &str,
) -> String {
    let scores = graph.node("MatMul", &[query, key_t], vec![]);
    let scores = graph.node("Mul", &[&scores, scale], vec![]);
    let scores = graph.node("Add", &[&scores, bias], vec![]);
    let probabilities = graph.node("Softmax", &[&scores], vec![attribute_int("axis", -1)]);
    let context = graph.node("MatMul", &[&probabilities, value], vec![]);
    let context = graph.node(
        "Transpose",
        &[&context],
        vec![attribute_ints("perm", &[0, 2, 1, 3])],
    );
    graph.node("Reshape", &[&context, merge_shape], vec![])
}

/// The serialised ONNX model of `model` at `opset`, with float32 weights.
pub fn export_onnx(model: &CrossEncoder, opset: i64) -> Result<Vec<u8>, ExportError> {
    export_onnx_with(model, opset, Quantization::None)
}

/// The serialised ONNX model of `model` at `opset`, its linear layers as `quantization` says.
pub fn export_onnx_with(
    model: &CrossEncoder,
    opset: i64,
    quantization: Quantization,
) -> Result<Vec<u8>, ExportError> {
    if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
        return Err(ExportError::Opset(opset));
    }
    // A LoRA model's adapters are merged into their layers: the graph is the full model.
    let parameters: HashMap<String, Tensor> = model.merged_parameters()?.into_iter().collect();
    let mut graph = GraphBuilder::new(quantization);

    // The BERT-encoder families share one graph, the family saying how it differs;
    // ModernBERT and DeBERTa-v2 have their own.
    let family = model.family();
    match model.config() {
        crosstrain_model::FamilyConfig::ModernBert(config) => {
            modernbert::emit(&mut graph, &parameters, config)?
        }
        crosstrain_model::FamilyConfig::DebertaV2(config) => {
            deberta_v2::emit(&mut graph, &parameters, config)?
        }
        crosstrain_model::FamilyConfig::Decoder(config) => {
            decoder::emit(&mut graph, &parameters, config)?
        }
        other => {
            let config = other
                .bert_config()
                .expect("every other family has a BERT-shaped config");
            let spec = EncoderGraph {
                config,
                prefix: family.tensor_names().prefix,
                positions: other.position_ids(),
                token_types: other.takes_token_type_ids(),
                head: match other.head_activation() {
                    None => Head::Pooler,
                    Some(activation) => Head::Classification(activation),
                },
            };
            bert::emit(&mut graph, &parameters, &spec, opset)?;
        }
    }

    let mut proto = GraphProto::new();
    proto.name = "crosstrain_cross_encoder".into();
    proto.node = graph.nodes;
    proto.initializer = graph.initializers;
    let dynamic = [Err("batch"), Err("sequence")];
    let mut inputs = vec!["input_ids", "attention_mask"];
    if model.config().takes_token_type_ids() {
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
