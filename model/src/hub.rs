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
    for file in ["model.safetensors", "tokenizer.json"] {
        repo.get(file)
            .map_err(|e| download_error(format!("{file}: {e}")))?;
    }
    for optional in ["tokenizer_config.json", "config_sentence_transformers.json"] {
        // Optional files: their absence is normal.
        let _ = repo.get(optional);
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| download_error("the hub cache returned no directory".into()))
}
