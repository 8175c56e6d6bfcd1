//! PEFT's `lora.Linear`: a linear layer with an optional LoRA adapter,
//! `W x + b + scaling · B A dropout(x)`, and the adapter matrices as PEFT draws them. Every
//! family's linear layers are one: the decoders create their adapters in it ([`LoraLinear::load`]),
//! the encoders find theirs beside the weight ([`LoraLinear::load_stored`]).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

use super::LoraConfig;
use crate::dropout::{Dropout, DropoutRng};

impl LoraConfig {
    /// The adapter matrices of the linear layer under `vb` (`lora_A.weight [r, in]` and
    /// `lora_B.weight [out, r]` beside its weight), from the checkpoint or drawn as PEFT
    /// draws them: A (and B with `init_lora_weights = false`) Kaiming-uniform, that is
    /// uniform in ±1/√fan_in, B zero otherwise.
    pub fn adapter_matrices(
        &self,
        vb: &VarBuilder,
        inputs: usize,
        outputs: usize,
    ) -> Result<(Tensor, Tensor)> {
        let uniform = |fan_in: usize| {
            let bound = 1.0 / (fan_in as f64).sqrt();
            Init::Uniform {
                lo: -bound,
                up: bound,
            }
        };
        let a = vb
            .pp("lora_A")
            .get_with_hints((self.r, inputs), "weight", uniform(inputs))?;
        let b_init = if self.init_lora_weights {
            Init::Const(0.0)
        } else {
            uniform(self.r)
        };
        let b = vb
            .pp("lora_B")
            .get_with_hints((outputs, self.r), "weight", b_init)?;
        Ok((a, b))
    }
}

/// A linear layer with an optional LoRA adapter (PEFT's `lora.Linear`).
#[derive(Debug, Clone)]
pub struct LoraLinear {
    base: Linear,
    adapter: Option<LoraAdapter>,
}

#[derive(Debug, Clone)]
struct LoraAdapter {
    /// `[r, in]`.
    a: Linear,
    /// `[out, r]`.
    b: Linear,
    scaling: f64,
    dropout: Dropout,
}

impl LoraLinear {
    /// Loads the linear layer under `vb` and, when `lora` targets it, its adapter
    /// (`lora_A.weight`, `lora_B.weight` under the same path). A fresh adapter is drawn as
    /// PEFT draws it: A (and B with `init_lora_weights = false`) Kaiming-uniform, that is
    /// uniform in ±1/√fan_in, B zero otherwise.
    pub fn load(
        vb: VarBuilder,
        inputs: usize,
        outputs: usize,
        bias: bool,
        lora: Option<&LoraConfig>,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let targeted = lora.filter(|config| config.targets(&vb.prefix()));
        Self::load_with_adapter(vb, inputs, outputs, bias, targeted, rng)
    }

    /// The layer under `vb`, with an adapter when `adapter` is given.
    fn load_with_adapter(
        vb: VarBuilder,
        inputs: usize,
        outputs: usize,
        bias: bool,
        adapter: Option<&LoraConfig>,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let base = if bias {
            candle_nn::linear(inputs, outputs, vb.clone())?
        } else {
            candle_nn::linear_no_bias(inputs, outputs, vb.clone())?
        };
        let adapter = match adapter {
            Some(config) => {
                let (a, b) = config.adapter_matrices(&vb, inputs, outputs)?;
                Some(LoraAdapter {
                    a: Linear::new(a, None),
                    b: Linear::new(b, None),
                    scaling: config.scaling(),
                    dropout: Dropout::new(config.lora_dropout, rng.clone()),
                })
            }
            None => None,
        };
        Ok(Self { base, adapter })
    }

    /// An encoder's linear layer under `vb`, with the adapter stored beside its weight
    /// when `lora` is given and there is one. An encoder's adapters are created once, when
    /// the model loads (`add_encoder_adapters`); its modules only find them, in the network
    /// built for a training pass with LoRA dropout (`CrossEncoder::adapted_encoder_network`).
    pub fn load_stored(
        vb: VarBuilder,
        inputs: usize,
        outputs: usize,
        bias: bool,
        lora: Option<&LoraConfig>,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let stored = vb.contains_tensor("lora_A.weight") && vb.contains_tensor("lora_B.weight");
        Self::load_with_adapter(vb, inputs, outputs, bias, lora.filter(|_| stored), rng)
    }

    /// A linear layer without an adapter over these tensors (a packed layer's views).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            base: Linear::new(weight, bias),
            adapter: None,
        }
    }

    /// Whether the layer has an adapter.
    pub fn is_adapted(&self) -> bool {
        self.adapter.is_some()
    }

    /// The adapter's `A [r, in]`, `B [out, r]`, scaling, and whether its dropout is the
    /// identity (p = 0), for the fused decoder layer.
    pub fn adapter_parts(&self) -> Option<(&Tensor, &Tensor, f64, bool)> {
        self.adapter.as_ref().map(|adapter| {
            (
                adapter.a.weight(),
                adapter.b.weight(),
                adapter.scaling,
                adapter.dropout.is_identity(),
            )
        })
    }

    /// The base layer's weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        self.base.weight()
    }

    /// The base layer's bias.
    pub fn bias(&self) -> Option<&Tensor> {
        self.base.bias()
    }
}

impl Module for LoraLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let weight = self.base.weight();
        if let Some(adapter) = &self.adapter {
            let training = x.track_op() || adapter.a.weight().track_op();
            if training && !weight.track_op() && adapter.dropout.is_identity() {
                // Training a frozen layer's adapter: one op, no weight gradient.
                return crate::kernels::frozen_linear::frozen_lora_linear(
                    x,
                    weight,
                    self.base.bias(),
                    adapter.a.weight(),
                    adapter.b.weight(),
                    adapter.scaling,
                );
            }
        }
        // A weight that tracks no op is frozen (a `Var`, or a weight computed from one, such
        // as an encoder's folded weight, needs its gradient).
        let output = if x.track_op() && !weight.track_op() {
            crate::kernels::frozen_linear::frozen_linear(x, weight, self.base.bias())?
        } else if weight.dtype() != x.dtype() {
            let weight = weight.to_dtype(x.dtype())?;
            let bias = self
                .base
                .bias()
                .map(|b| b.to_dtype(x.dtype()))
                .transpose()?;
            Linear::new(weight, bias).forward(x)?
        } else {
            self.base.forward(x)?
        };
        match &self.adapter {
            None => Ok(output),
            Some(adapter) => {
                // PEFT's order: result + lora_B(lora_A(dropout(x))) * scaling.
                let update = adapter
                    .b
                    .forward(&adapter.a.forward(&adapter.dropout.forward(x)?)?)?;
                output + (update * adapter.scaling)?
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::DType;

    use super::*;
    use crate::lora::{merge_weight, TargetModules};

    #[test]
    fn lora_linear_adds_the_scaled_update_and_merges_to_it() {
        let device = candle_core::Device::Cpu;
        let weight = Tensor::new(&[[1f32, 2.0, 0.5], [0.0, -1.0, 3.0]], &device).unwrap();
        let a = Tensor::new(&[[0.5f32, -0.25, 1.0]], &device).unwrap();
        let b = Tensor::new(&[[2f32], [-1.0]], &device).unwrap();
        let tensors: HashMap<String, Tensor> = [
            ("layer.q_proj.weight".to_string(), weight.clone()),
            ("layer.q_proj.lora_A.weight".to_string(), a.clone()),
            ("layer.q_proj.lora_B.weight".to_string(), b.clone()),
        ]
        .into_iter()
        .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let config = LoraConfig {
            r: 1,
            lora_alpha: 3.0,
            target_modules: Some(TargetModules::Names(vec!["q_proj".into()])),
            ..LoraConfig::default()
        };
        let layer = LoraLinear::load(
            vb.pp("layer").pp("q_proj"),
            3,
            2,
            false,
            Some(&config),
            &DropoutRng::default(),
        )
        .unwrap();
        assert!(layer.is_adapted());
        let x = Tensor::new(&[[1f32, 1.0, 2.0]], &device).unwrap();
        let y: Vec<Vec<f32>> = layer.forward(&x).unwrap().to_vec2().unwrap();
        // W x = [4, 5]; A x = 2.25; scaling 3: + 3·[4.5, -2.25].
        assert_eq!(y, vec![vec![4.0 + 13.5, 5.0 - 6.75]]);
        let merged = merge_weight(&weight, &a, &b, 3.0).unwrap();
        let y_merged: Vec<Vec<f32>> = x.matmul(&merged.t().unwrap()).unwrap().to_vec2().unwrap();
        assert_eq!(y, y_merged);
    }
}
