//! The pooler: dense + tanh on the [CLS] hidden state.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::BertConfig;

/// `BertPooler`.
#[derive(Debug, Clone)]
pub struct BertPooler {
    dense: Linear,
}

impl BertPooler {
    /// Loads `pooler.dense`.
    pub fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        Ok(Self {
            dense: candle_nn::linear(config.hidden_size, config.hidden_size, vb.pp("dense"))?,
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
