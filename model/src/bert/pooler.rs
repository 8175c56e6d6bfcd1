//! The pooler: dense + tanh on the [CLS] hidden state.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::BertConfig;
use crate::dropout::DropoutRng;
use crate::lora::LoraLinear;

/// `BertPooler`.
#[derive(Debug, Clone)]
pub struct BertPooler {
    dense: LoraLinear,
}

impl BertPooler {
    /// Loads `pooler.dense`.
    pub fn load(vb: VarBuilder, config: &BertConfig, rng: &DropoutRng) -> Result<Self> {
        Ok(Self {
            dense: LoraLinear::load_stored(
                vb.pp("dense"),
                config.hidden_size,
                config.hidden_size,
                true,
                config.lora.as_ref(),
                rng,
            )?,
        })
    }
}

impl Module for BertPooler {
    /// `[b, s, hidden]` to `[b, hidden]`.
    fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        self.dense.forward(&cls)?.tanh()
    }
}
