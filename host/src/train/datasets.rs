//! The recipe's `train` and `eval`: one dataset (a data spec with `files`), or several named
//! ones, as sentence-transformers' dict of datasets with a dict of losses:
//!
//! ```toml
//! [train.pairs]
//! files = "pairs.jsonl"                  # BinaryCrossEntropyLoss, the top-level loss
//! [train.triplets]
//! files = "triplets.jsonl"
//! loss = "MultipleNegativesRankingLoss"  # this dataset's own loss
//! loss_config = { scale = 20.0 }
//! ```
//!
//! Named datasets are taken in name order (TOML tables carry no order we keep).

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::data::dataset::DatasetSpec;

/// One dataset of the recipe, with the loss it trains (or is evaluated) with when that is not
/// the top-level one.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedDataset {
    /// Its name (`train` for a recipe's single dataset): it prefixes its logged losses.
    pub name: String,
    /// Where its rows come from.
    pub spec: DatasetSpec,
    /// Its loss; default: the top-level `loss`.
    pub loss: Option<String>,
    /// Its loss's config; default: the top-level `loss_config` when the loss is the
    /// top-level one, else the loss's defaults.
    pub loss_config: Option<Value>,
}

/// `train` or `eval`: one dataset, or several by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Datasets {
    /// The datasets, in name order when named.
    pub entries: Vec<NamedDataset>,
    /// Whether they were given by name (`[train.NAME]`), which is how they are written back.
    pub named: bool,
}

impl Datasets {
    /// A single dataset called `name`.
    pub fn single(name: &str, spec: DatasetSpec) -> Self {
        Self {
            entries: vec![NamedDataset {
                name: name.to_string(),
                spec,
                loss: None,
                loss_config: None,
            }],
            named: false,
        }
    }

    /// Resolves every file against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        for entry in &mut self.entries {
            entry.spec.resolve_paths(base);
        }
    }

    /// The loss and loss config of `entry`, with the top-level ones as the fallback.
    pub fn loss_of<'a>(
        entry: &'a NamedDataset,
        top_loss: &'a str,
        top_config: &'a Value,
    ) -> (&'a str, Value) {
        match entry.loss.as_deref() {
            None => (
                top_loss,
                entry
                    .loss_config
                    .clone()
                    .unwrap_or_else(|| top_config.clone()),
            ),
            Some(loss) if loss == top_loss => (
                loss,
                entry
                    .loss_config
                    .clone()
                    .unwrap_or_else(|| top_config.clone()),
            ),
            Some(loss) => (
                loss,
                entry
                    .loss_config
                    .clone()
                    .unwrap_or_else(|| Value::Object(Default::default())),
            ),
        }
    }
}

impl Serialize for Datasets {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !self.named {
            if let Some(entry) = self.entries.first() {
                return entry.spec.serialize(serializer);
            }
        }
        let mut map = BTreeMap::new();
        for entry in &self.entries {
            let mut value = serde_json::to_value(&entry.spec).map_err(serde::ser::Error::custom)?;
            if let Value::Object(fields) = &mut value {
                if let Some(loss) = &entry.loss {
                    fields.insert("loss".into(), Value::String(loss.clone()));
                }
                if let Some(config) = &entry.loss_config {
                    fields.insert("loss_config".into(), config.clone());
                }
            }
            map.insert(entry.name.clone(), value);
        }
        map.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Datasets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = Value::deserialize(deserializer)?;
        let Value::Object(table) = value else {
            return Err(D::Error::custom(
                "expected a table: a data spec with `files`, or named data specs",
            ));
        };
        if table.contains_key("files") {
            let spec: DatasetSpec =
                serde_json::from_value(Value::Object(table)).map_err(D::Error::custom)?;
            return Ok(Datasets::single("train", spec));
        }
        if table.is_empty() {
            return Err(D::Error::custom(
                "no dataset: give `files`, or one or more named tables with `files`",
            ));
        }
        let mut entries = Vec::new();
        for (name, value) in table {
            let Value::Object(mut fields) = value else {
                return Err(D::Error::custom(format!(
                    "`{name}` is neither a data spec key nor a named dataset table (a named \
                     dataset needs `files`)"
                )));
            };
            let loss = match fields.remove("loss") {
                None => None,
                Some(Value::String(loss)) => Some(loss),
                Some(other) => {
                    return Err(D::Error::custom(format!(
                        "dataset `{name}`: loss must be a string, not {other}"
                    )))
                }
            };
            let loss_config = fields.remove("loss_config");
            if loss_config.as_ref().is_some_and(|c| !c.is_object()) {
                return Err(D::Error::custom(format!(
                    "dataset `{name}`: loss_config must be a table"
                )));
            }
            let spec: DatasetSpec = serde_json::from_value(Value::Object(fields))
                .map_err(|e| D::Error::custom(format!("dataset `{name}`: {e}")))?;
            entries.push(NamedDataset {
                name,
                spec,
                loss,
                loss_config,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Datasets {
            entries,
            named: true,
        })
    }
}

/// The schema of [`Datasets`]: a data spec, or a table of named ones.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum DatasetsSchema {
    /// One dataset.
    One(DatasetSpec),
    /// Several, by name; each may name its own loss.
    Named(BTreeMap<String, NamedDatasetSchema>),
}

/// The schema of one named dataset.
#[derive(JsonSchema)]
#[allow(dead_code)]
pub struct NamedDatasetSchema {
    /// The data spec's keys.
    #[serde(flatten)]
    pub spec: DatasetSpec,
    /// This dataset's loss (default: the top-level `loss`).
    pub loss: Option<String>,
    /// Its loss config.
    pub loss_config: Option<serde_json::Map<String, Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_named_datasets_read_and_write_back() {
        let one: Datasets = toml::from_str::<toml::Value>("files = \"a.jsonl\"")
            .unwrap()
            .try_into()
            .unwrap();
        assert!(!one.named);
        assert_eq!(one.entries[0].name, "train");
        assert_eq!(
            serde_json::to_value(&one).unwrap()["files"],
            serde_json::json!(["a.jsonl"])
        );
        let text = "[triplets]\nfiles = \"t.jsonl\"\nloss = \"MultipleNegativesRankingLoss\"\n\
                    loss_config = { scale = 10.0 }\n[pairs]\nfiles = \"p.jsonl\"\nlimit = 5\n";
        let named: Datasets = toml::from_str::<toml::Value>(text)
            .unwrap()
            .try_into()
            .unwrap();
        assert!(named.named);
        let names: Vec<&str> = named.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["pairs", "triplets"]);
        assert_eq!(named.entries[0].spec.limit, Some(5));
        let top = serde_json::json!({"pos_weight": 2.0});
        let (loss, config) = Datasets::loss_of(&named.entries[0], "BinaryCrossEntropyLoss", &top);
        assert_eq!((loss, &config), ("BinaryCrossEntropyLoss", &top));
        let (loss, config) = Datasets::loss_of(&named.entries[1], "BinaryCrossEntropyLoss", &top);
        assert_eq!(loss, "MultipleNegativesRankingLoss");
        assert_eq!(config["scale"], 10.0);
        let written = serde_json::to_value(&named).unwrap();
        assert_eq!(written["triplets"]["loss"], "MultipleNegativesRankingLoss");
        let again: Datasets = serde_json::from_value(written).unwrap();
        assert_eq!(again, named);
        let bad: Result<Datasets, _> =
            toml::from_str::<toml::Value>("[pairs]\nfile = \"p.jsonl\"\n")
                .unwrap()
                .try_into();
        let message = bad.unwrap_err().to_string();
        assert!(message.contains("dataset `pairs`"), "{message}");
    }
}
