//! The recipe's `prompts` (sentence-transformers' `CrossEncoderTrainingArguments.prompts`):
//! one prompt for every training dataset, or one per named dataset, resolved per batch.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::datasets::Datasets;

/// The recipe's `prompts`: one for all datasets, or one per named dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Prompts {
    /// The same prompt for every dataset.
    All(String),
    /// Dataset name → prompt.
    PerDataset(std::collections::BTreeMap<String, String>),
}

impl Prompts {
    /// The prompt of the dataset called `name`, if any.
    pub fn for_dataset(&self, name: &str) -> Option<&str> {
        match self {
            Self::All(prompt) => Some(prompt),
            Self::PerDataset(prompts) => prompts.get(name).map(String::as_str),
        }
    }

    /// Refuses a table whose keys are not the recipe's dataset names (or any table when the
    /// datasets are not named): such a prompt would silently apply to nothing.
    pub fn check(&self, train: &Datasets, eval: Option<&Datasets>) -> Result<(), String> {
        let Self::PerDataset(prompts) = self else {
            return Ok(());
        };
        let names: Vec<&str> = train
            .entries
            .iter()
            .chain(eval.iter().flat_map(|eval| eval.entries.iter()))
            .map(|entry| entry.name.as_str())
            .collect();
        let Some(unknown) = prompts
            .keys()
            .find(|key| !train.named || !names.contains(&key.as_str()))
        else {
            return Ok(());
        };
        Err(if train.named {
            format!(
                "{unknown:?} is no dataset of this recipe (its datasets: {})",
                names.join(", ")
            )
        } else {
            format!(
                "a table of prompts per dataset needs named datasets ([train.NAME]); {unknown:?} \
                 names none: give one string for the single dataset"
            )
        })
    }
}
