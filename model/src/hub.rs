//! Model directories by path or by Hugging Face hub id (downloaded with hf-hub into its
//! usual cache; tests use local directories, since this path needs the network).

use std::path::{Path, PathBuf};

use crate::error::ModelError;

/// The directory of a model: a local path, else a hub id downloaded with hf-hub.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf, ModelError> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let looks_like_hub_id = spec.split('/').count() == 2
        && !spec.starts_with('.')
        && !spec.starts_with('/')
        && spec.split('/').all(|part| !part.is_empty());
    if !looks_like_hub_id {
        return Err(ModelError::NotFound {
            spec: spec.to_string(),
        });
    }
    download_from_hub(spec)
}

#[cfg(not(feature = "hub"))]
fn download_from_hub(model_id: &str) -> Result<PathBuf, ModelError> {
    Err(ModelError::Download {
        model: model_id.to_string(),
        message: "this build of crosstrain-model has no hub support (enable its `hub` \
                  feature), and no such local directory exists"
            .into(),
    })
}

#[cfg(feature = "hub")]
/// Fetches the files a cross-encoder needs from the Hugging Face hub into its cache (this
/// path needs the network, so tests use local directories).
fn download_from_hub(model_id: &str) -> Result<PathBuf, ModelError> {
    let download_error = |message: String| ModelError::Download {
        model: model_id.to_string(),
        message,
    };
    let api = hf_hub::api::sync::Api::new().map_err(|e| download_error(e.to_string()))?;
    let repo = api.model(model_id.to_string());
    let config = repo
        .get("config.json")
        .map_err(|e| download_error(format!("config.json: {e}")))?;
    repo.get("tokenizer.json")
        .map_err(|e| download_error(format!("tokenizer.json: {e}")))?;
    if let Err(single) = repo.get("model.safetensors") {
        // A sharded checkpoint: the index, then every shard it names.
        let index = repo
            .get("model.safetensors.index.json")
            .map_err(|_| download_error(format!("model.safetensors: {single}")))?;
        let index: serde_json::Value = std::fs::read_to_string(&index)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let shards: std::collections::BTreeSet<&str> = index
            .get("weight_map")
            .and_then(serde_json::Value::as_object)
            .map(|map| map.values().filter_map(serde_json::Value::as_str).collect())
            .unwrap_or_default();
        for shard in shards {
            repo.get(shard)
                .map_err(|e| download_error(format!("{shard}: {e}")))?;
        }
    }
    for optional in [
        "tokenizer_config.json",
        "config_sentence_transformers.json",
        "special_tokens_map.json",
        "sentence_bert_config.json",
        "chat_template.jinja",
    ] {
        // Optional files: their absence is normal.
        let _ = repo.get(optional);
    }
    // sentence-transformers' modules: each module folder's config (a decoder's LogitScore
    // tokens, an embedder's pooling), or the model would load as something else.
    if let Ok(modules) = repo.get("modules.json") {
        let entries: Vec<serde_json::Value> = std::fs::read_to_string(&modules)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        for folder in entries
            .iter()
            .filter_map(|entry| entry.get("path").and_then(serde_json::Value::as_str))
            .filter(|path| !path.is_empty())
        {
            let _ = repo.get(&format!("{folder}/config.json"));
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| download_error("the hub cache returned no directory".into()))
}

/// A Hugging Face **dataset** repository's files whose repository paths `wanted` accepts,
/// downloaded with hf-hub into its cache; returns the local snapshot directory, in which
/// each file has its repository path. (The NanoBEIR evaluator reads its subsets this way;
/// this path needs the network, so tests use local directories.)
#[cfg(feature = "hub")]
pub fn download_dataset_files(
    dataset_id: &str,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<PathBuf, ModelError> {
    let download_error = |message: String| ModelError::Download {
        model: format!("dataset {dataset_id}"),
        message,
    };
    let api = hf_hub::api::sync::Api::new().map_err(|e| download_error(e.to_string()))?;
    let repo = api.dataset(dataset_id.to_string());
    let info = repo.info().map_err(|e| download_error(e.to_string()))?;
    let files: Vec<&str> = info
        .siblings
        .iter()
        .map(|sibling| sibling.rfilename.as_str())
        .filter(|name| wanted(name))
        .collect();
    let mut root = None;
    for file in &files {
        let local = repo
            .get(file)
            .map_err(|e| download_error(format!("{file}: {e}")))?;
        // The snapshot directory: the local path less the file's repository path.
        let depth = Path::new(file).components().count();
        root = local.ancestors().nth(depth).map(Path::to_path_buf);
    }
    root.ok_or_else(|| download_error("no file of the repository is one it needs".into()))
}

/// Without the `hub` feature a dataset id cannot be fetched.
#[cfg(not(feature = "hub"))]
pub fn download_dataset_files(
    dataset_id: &str,
    _wanted: &dyn Fn(&str) -> bool,
) -> Result<PathBuf, ModelError> {
    Err(ModelError::Download {
        model: format!("dataset {dataset_id}"),
        message: "this build of crosstrain-model has no hub support (enable its `hub` \
                  feature), and no such local directory exists"
            .into(),
    })
}
