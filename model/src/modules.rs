//! sentence-transformers' modular directories: `modules.json` lists the modules a
//! CrossEncoder runs in order. crosstrain runs the Transformer module and, after a causal LM,
//! the LogitScore module; any other module (a Router, a Dense head, ...) is an error that
//! names it, never silently skipped (the model would score with a head it does not have).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ModelError;

/// The Transformer module's class names (sentence-transformers 6 and earlier).
const TRANSFORMER_TYPES: &[&str] = &[
    "sentence_transformers.base.modules.transformer.Transformer",
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Transformer.Transformer",
];

/// The LogitScore module's class name.
pub const LOGIT_SCORE_TYPE: &str =
    "sentence_transformers.cross_encoder.modules.logit_score.LogitScore";

/// One entry of `modules.json`.
#[derive(Debug, Clone, Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// `1_LogitScore/config.json`: which token logits make the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct LogitScoreConfig {
    /// The token whose logit counts for the pair ("yes").
    pub true_token_id: u32,
    /// The token whose logit counts against it ("no"); `None`: the true logit alone.
    #[serde(default)]
    pub false_token_id: Option<u32>,
}

/// What a model directory's `modules.json` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrossEncoderModules {
    /// The LogitScore module's config and folder, when there is one.
    pub logit_score: Option<(LogitScoreConfig, PathBuf)>,
}

/// Reads `dir/modules.json` (absent: a plain transformers directory, one Transformer).
/// Modules crosstrain does not run are an error naming the module and the file.
pub fn read_modules(dir: &Path) -> Result<CrossEncoderModules, ModelError> {
    let file = dir.join("modules.json");
    if !file.is_file() {
        return Ok(CrossEncoderModules::default());
    }
    let bad = |message: String| ModelError::BadFile {
        path: file.clone(),
        message,
    };
    let text = std::fs::read_to_string(&file).map_err(|e| bad(e.to_string()))?;
    let entries: Vec<ModuleEntry> = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut modules = CrossEncoderModules::default();
    for (index, entry) in entries.iter().enumerate() {
        if TRANSFORMER_TYPES.contains(&entry.kind.as_str()) {
            if index != 0 {
                return Err(bad(format!(
                    "the Transformer module is module {index}; crosstrain runs it first"
                )));
            }
        } else if entry.kind == LOGIT_SCORE_TYPE {
            let folder = dir.join(&entry.path);
            let config_file = folder.join("config.json");
            let config: LogitScoreConfig = std::fs::read_to_string(&config_file)
                .map_err(|e| e.to_string())
                .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
                .map_err(|message| ModelError::BadFile {
                    path: config_file.clone(),
                    message,
                })?;
            modules.logit_score = Some((config, folder));
        } else {
            return Err(bad(format!(
                "module {index} is {:?} (at {:?}), which crosstrain does not implement; it runs \
                 a Transformer module and, after a causal LM, a LogitScore module",
                entry.kind, entry.path
            )));
        }
    }
    if entries.is_empty() {
        return Err(bad("lists no module".into()));
    }
    Ok(modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_score_is_read_and_unknown_modules_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| std::fs::write(dir.path().join("modules.json"), text).unwrap();
        assert_eq!(
            read_modules(dir.path()).unwrap(),
            CrossEncoderModules::default()
        );
        std::fs::create_dir(dir.path().join("1_LogitScore")).unwrap();
        std::fs::write(
            dir.path().join("1_LogitScore/config.json"),
            r#"{"true_token_id": 7, "false_token_id": 3, "module_input_name": "causal_logits"}"#,
        )
        .unwrap();
        write(&format!(
            r#"[{{"idx": 0, "name": "0", "path": "", "type": "{}"}},
                {{"idx": 1, "name": "1", "path": "1_LogitScore", "type": "{LOGIT_SCORE_TYPE}"}}]"#,
            TRANSFORMER_TYPES[0]
        ));
        let modules = read_modules(dir.path()).unwrap();
        assert_eq!(
            modules.logit_score.unwrap().0,
            LogitScoreConfig {
                true_token_id: 7,
                false_token_id: Some(3)
            }
        );
        write(&format!(
            r#"[{{"idx": 0, "name": "0", "path": "", "type": "{}"}},
                {{"idx": 1, "name": "1", "path": "1_Dense", "type": "sentence_transformers.models.Dense"}}]"#,
            TRANSFORMER_TYPES[0]
        ));
        let error = read_modules(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("modules.json") && error.contains("sentence_transformers.models.Dense"),
            "{error}"
        );
    }
}
