//! Config pieces the reference's losses share: the activation applied to logits before the
//! loss maths, and torch's reduction. Both derive serde and schemars, so they drop into a
//! loss config as they are.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::numerics::sigmoid;

/// The element-wise function a loss applies to the raw logits before its maths (the
/// reference's `activation_fn`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `torch.nn.Identity`: the raw logit.
    #[default]
    Identity,
    /// `torch.nn.Sigmoid`: 1 / (1 + e^-x).
    Sigmoid,
    /// `torch.nn.Tanh`.
    Tanh,
}

impl Activation {
    /// The activation of `x`.
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Activation::Identity => x,
            Activation::Sigmoid => sigmoid(x),
            Activation::Tanh => x.tanh(),
        }
    }

    /// d activation / dx at `x`.
    pub fn derivative(self, x: f64) -> f64 {
        match self {
            Activation::Identity => 1.0,
            Activation::Sigmoid => {
                let s = sigmoid(x);
                s * (1.0 - s)
            }
            Activation::Tanh => {
                let t = x.tanh();
                1.0 - t * t
            }
        }
    }

    /// The name the reference's `get_config_dict` writes (`fullname(module)`).
    pub fn reference_name(self) -> &'static str {
        match self {
            Activation::Identity => "torch.nn.modules.linear.Identity",
            Activation::Sigmoid => "torch.nn.modules.activation.Sigmoid",
            Activation::Tanh => "torch.nn.modules.activation.Tanh",
        }
    }
}

/// How per-item losses become one number (torch's `reduction`; `"none"` cannot train).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    /// The mean over items.
    #[default]
    Mean,
    /// The sum over items.
    Sum,
}
