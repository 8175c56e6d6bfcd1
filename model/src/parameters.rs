//! A model's trainable parameters, each under its transformers name, and the layers that keep
//! theirs in one packed `Var`.
//!
//! Why packed: the fused CPU layer ops read all of a layer's parameters as one vector. Packed
//! on every forward pass (`flatten_all` and `cat` of sixteen tensors), candle's backward pass
//! then hands each tensor its slice through a reshape and a cat node, each giving a
//! zero-filled buffer and an add over the whole layer (three zero-and-add sweeps over 1.8M
//! gradients a MiniLM layer, and a copy of the parameters in the forward pass). A layer that
//! will run the fused op instead keeps its parameters in one `Var` from the start: the op reads
//! it as it is, its gradient lands on the `Var` directly, and the layer's modules (used by the
//! composite path and by nothing on the fused path) are views of slices of it, so both paths
//! see the same values. Only the optimiser, the checkpoint files and the exporter need names:
//! [`Trainable`] says which slice of which `Var` each named parameter is.

use std::collections::HashMap;

use candle_core::{Result, Shape, Tensor, Var};

/// One named parameter inside a trainable `Var`: a whole `Var`, or one slice of a packed
/// layer's `Var` (row-major, `shape` starting at element `offset`).
#[derive(Debug, Clone)]
pub struct NamedPart {
    /// The transformers name (`bert.encoder.layer.0.attention.self.query.weight`).
    pub name: String,
    /// The first element of the parameter in the `Var`.
    pub offset: usize,
    /// The parameter's shape.
    pub shape: Shape,
}

impl NamedPart {
    /// The elements of the `Var` the parameter occupies.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.shape.elem_count()
    }

    /// The parameter's slice, in its shape, of a tensor laid out as its `Var` is (the
    /// value, a gradient, an optimiser moment): a view, no copy.
    pub fn slice_of(&self, whole: &Tensor) -> Result<Tensor> {
        whole
            .flatten_all()?
            .narrow(0, self.offset, self.shape.elem_count())?
            .reshape(self.shape.clone())
    }
}

/// One trainable `Var` (what gets a gradient and an optimiser state) and the named
/// parameters it holds, in the order they lie in it.
#[derive(Debug, Clone)]
pub struct Trainable {
    /// The variable.
    pub var: Var,
    /// Its parameters; one covering the whole `Var` unless it is a packed layer's.
    pub parts: Vec<NamedPart>,
}

impl Trainable {
    /// A `Var` that is a single parameter.
    pub fn single(name: String, var: Var) -> Self {
        let shape = var.shape().clone();
        Self {
            var,
            parts: vec![NamedPart {
                name,
                offset: 0,
                shape,
            }],
        }
    }

    /// Whether the `Var` is one parameter (not a packed layer).
    pub fn is_single(&self) -> bool {
        self.parts.len() == 1
            && self.parts[0].offset == 0
            && self.parts[0].shape == *self.var.shape()
    }

    /// A part's current value: the `Var` itself, or a view of its slice (no copy).
    pub fn value(&self, part: &NamedPart) -> Result<Tensor> {
        if self.is_single() {
            return Ok(self.var.as_tensor().clone());
        }
        part.slice_of(self.var.as_tensor())
    }

    /// Overwrites a part's value in place (the layers' views see the new value).
    pub fn set(&self, part: &NamedPart, value: &Tensor) -> Result<()> {
        if value.shape() != &part.shape {
            candle_core::bail!(
                "{} has shape {:?}, the value {:?}",
                part.name,
                part.shape.dims(),
                value.dims()
            );
        }
        let value = value.to_dtype(self.var.dtype())?;
        if self.is_single() {
            return self.var.set(&value);
        }
        self.var
            .as_tensor()
            .slice_set(&value.flatten_all()?.contiguous()?, 0, part.offset)
    }

    /// Every part with its current value.
    pub fn named_values(&self) -> Result<Vec<(String, Tensor)>> {
        self.parts
            .iter()
            .map(|part| Ok((part.name.clone(), self.value(part)?)))
            .collect()
    }
}

/// A layer whose fused op reads its parameters packed into one vector.
pub(crate) trait PackedLayer {
    /// Whether the layer will run its fused op (so that packing pays): the composite path
    /// on other devices keeps separate tensors, whose gradients need no slicing.
    fn runs_fused(&self) -> bool;

    /// The layer's parameter tensors in the fused op's packing order.
    fn packing_order(&self) -> Vec<Tensor>;

    /// Rebuilds the layer's modules as views of `packed` (laid out in packing order) and
    /// hands `packed` itself to the fused op from now on.
    fn use_packed(&mut self, packed: Tensor) -> Result<()>;
}

/// Views of the consecutive slices of the 1-D `packed` with the given shapes.
pub(crate) fn packed_views(packed: &Tensor, shapes: &[Shape]) -> Result<Vec<Tensor>> {
    let total: usize = shapes.iter().map(Shape::elem_count).sum();
    if packed.elem_count() != total {
        candle_core::bail!(
            "a packed layer of {} values for parameters of {total}",
            packed.elem_count()
        );
    }
    let mut offset = 0;
    shapes
        .iter()
        .map(|shape| {
            let len = shape.elem_count();
            let view = packed.narrow(0, offset, len)?.reshape(shape.clone())?;
            offset += len;
            Ok(view)
        })
        .collect()
}

/// Moves each layer that will run fused onto one packed `Var` built from its current
/// parameters, whose names `names_by_id` gives (each parameter's tensor id to its name):
/// the packed layers' trainables, in layer order. Names found are removed from the map, so
/// what remains are the parameters that stay single.
pub(crate) fn pack_layers(
    layers: Vec<&mut dyn PackedLayer>,
    names_by_id: &mut HashMap<candle_core::TensorId, String>,
) -> Result<Vec<Trainable>> {
    let mut packed_layers = Vec::new();
    for layer in layers {
        if !layer.runs_fused() {
            continue;
        }
        let tensors = layer.packing_order();
        let mut parts = Vec::with_capacity(tensors.len());
        let mut offset = 0;
        for tensor in &tensors {
            let name = names_by_id.remove(&tensor.id()).ok_or_else(|| {
                candle_core::Error::Msg("a packed layer's parameter is no named variable".into())
            })?;
            parts.push(NamedPart {
                name,
                offset,
                shape: tensor.shape().clone(),
            });
            offset += tensor.elem_count();
        }
        let flat = tensors
            .iter()
            .map(Tensor::flatten_all)
            .collect::<Result<Vec<_>>>()?;
        let var = Var::from_tensor(&Tensor::cat(&flat, 0)?.detach())?;
        layer.use_packed(var.as_tensor().clone())?;
        packed_layers.push(Trainable { var, parts });
    }
    Ok(packed_layers)
}

/// Hands each layer that runs fused its packed vector, in layer order (a network built again
/// over the same parameters, such as the detached one for inference).
pub(crate) fn use_packed(layers: Vec<&mut dyn PackedLayer>, packed: Vec<Tensor>) -> Result<()> {
    let mut packed = packed.into_iter();
    for layer in layers.into_iter().filter(|layer| layer.runs_fused()) {
        match packed.next() {
            Some(vector) => layer.use_packed(vector)?,
            None => candle_core::bail!("more fused layers than packed parameter vectors"),
        }
    }
    if packed.next().is_some() {
        candle_core::bail!("more packed parameter vectors than fused layers");
    }
    Ok(())
}
