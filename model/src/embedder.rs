//! A sentence-transformers bi-encoder (`SentenceTransformer`: an encoder of any supported
//! family, pooling, normalisation)
//! for dense retrieval in hard-negative mining. It reads the same Hugging Face directory
//! layout as the cross-encoder: `config.json`, `model.safetensors` (with or without the
//! family's prefix, e.g. `bert.`), `tokenizer.json`, and the pooling settings in `modules.json` /
//! `1_Pooling/config.json`.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use crate::dropout::DropoutRng;
use crate::error::ModelError;
use crate::family::TokenEncoder;
use crate::files::{default_max_length, load_tokenizer, read_json, read_model_config};
use crate::tokenize::PairTokenizer;
use crate::tokens::TokenTensors;

/// How token states become one sentence vector (sentence-transformers' `Pooling` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over real tokens (`pooling_mode_mean_tokens`, the default of most models).
    Mean,
    /// The `[CLS]` token's state (`pooling_mode_cls_token`).
    Cls,
}

/// A sentence embedder whose vectors are L2-normalised, as `mine_hard_negatives`
/// requests (`normalize_embeddings=True`), so a dot product is the cosine similarity.
pub struct SentenceEmbedder {
    encoder: TokenEncoder,
    tokenizer: PairTokenizer,
    pooling: Pooling,
    device: Device,
    dimension: usize,
    takes_token_type_ids: bool,
}

impl SentenceEmbedder {
    /// Loads a sentence-transformers (or plain encoder) directory on `device`. `max_length`
    /// defaults to `max_seq_length` of `sentence_bert_config.json`, else to the tokenizer's
    /// `model_max_length` capped at `max_position_embeddings`.
    pub fn load_dir(
        dir: &Path,
        device: &Device,
        max_length: Option<usize>,
    ) -> Result<Self, ModelError> {
        let (config, _) = read_model_config(dir)?;
        let tensor_names = config.family().tensor_names();
        for file in ["model.safetensors", "tokenizer.json"] {
            if !dir.join(file).is_file() {
                return Err(ModelError::MissingFile {
                    dir: dir.to_path_buf(),
                    file,
                });
            }
        }
        let max_length = match max_length {
            Some(length) => crate::cross_encoder::check_max_length(dir, length, &config)?,
            None => sentence_max_length(dir)?.map_or_else(
                || default_max_length(dir, &config),
                |n| Ok(n.min(config.max_position_embeddings())),
            )?,
        };
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), max_length)?;
        let weights_path = dir.join("model.safetensors");
        let checkpoint =
            candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(|e| {
                ModelError::BadFile {
                    path: weights_path.clone(),
                    message: e.to_string(),
                }
            })?;
        // Plain tensors, not `Var`s: inference records no backward graph, so each layer's
        // intermediates are freed as soon as the next layer has used them.
        let tensors: std::collections::HashMap<String, Tensor> = checkpoint
            .into_iter()
            .map(|(name, tensor)| (tensor_names.canonical_name(&name), tensor))
            .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        // Default DropoutRng is in eval mode: embedding never drops anything.
        let encoder = TokenEncoder::load(vb, &config, &DropoutRng::default()).map_err(|e| {
            ModelError::BadFile {
                path: weights_path.clone(),
                message: e.to_string(),
            }
        })?;
        Ok(Self {
            encoder,
            tokenizer,
            pooling: pooling_of(dir)?,
            device: device.clone(),
            dimension: config.hidden_size(),
            takes_token_type_ids: config.takes_token_type_ids(),
        })
    }

    /// Length of each vector.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Truncation length.
    pub fn max_length(&self) -> usize {
        self.tokenizer.max_length()
    }

    /// The pooling the directory asked for.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Unit-length embeddings of `texts`, row-major `[texts.len(), dimension]`, in input
    /// order. Texts are embedded `batch_size` at a time, longest first, so batches pad little.
    pub fn embed(&self, texts: &[&str], batch_size: usize) -> Result<Vec<f32>, ModelError> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
        let mut embeddings = vec![0f32; texts.len() * self.dimension];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            let vectors = self.embed_batch(&batch)?;
            for (&index, vector) in chunk.iter().zip(vectors.chunks(self.dimension)) {
                embeddings[index * self.dimension..(index + 1) * self.dimension]
                    .copy_from_slice(vector);
            }
        }
        Ok(embeddings)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<f32>, ModelError> {
        let encoded = self.tokenizer.encode_texts(texts)?;
        let tokens = TokenTensors::for_model(&encoded, &self.device, self.takes_token_type_ids)?;
        let hidden = self.encoder.forward(&tokens)?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.i((.., 0, ..))?,
            Pooling::Mean => {
                let mask = tokens.attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
                let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
                summed.broadcast_div(&counts)?
            }
        };
        let mut vectors = pooled
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for vector in vectors.chunks_mut(self.dimension) {
            normalise(vector);
        }
        Ok(vectors)
    }
}

/// Scales a vector to unit length, as torch's `normalize` does (a zero vector stays zero).
fn normalise(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in vector {
        *x /= norm;
    }
}

/// `max_seq_length` of `sentence_bert_config.json`, if the file has one.
fn sentence_max_length(dir: &Path) -> Result<Option<usize>, ModelError> {
    let path = dir.join("sentence_bert_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    Ok(read_json(&path)?
        .get("max_seq_length")
        .and_then(Value::as_u64)
        .map(|n| n as usize))
}

/// The pooling of the directory's `Pooling` module (from `modules.json`); mean without one.
fn pooling_of(dir: &Path) -> Result<Pooling, ModelError> {
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        return Ok(Pooling::Mean);
    }
    let modules = read_json(&modules_path)?;
    let pooling_dir = modules.as_array().and_then(|modules| {
        modules.iter().find_map(|module| {
            let kind = module.get("type")?.as_str()?;
            kind.ends_with("Pooling")
                .then(|| module.get("path")?.as_str().map(str::to_string))
                .flatten()
        })
    });
    let Some(pooling_dir) = pooling_dir else {
        return Ok(Pooling::Mean);
    };
    let path = dir.join(pooling_dir).join("config.json");
    if !path.is_file() {
        return Ok(Pooling::Mean);
    }
    let config = read_json(&path)?;
    let flag = |key: &str| config.get(key).and_then(Value::as_bool).unwrap_or(false);
    if flag("pooling_mode_mean_tokens") {
        Ok(Pooling::Mean)
    } else if flag("pooling_mode_cls_token") {
        Ok(Pooling::Cls)
    } else {
        Err(ModelError::BadFile {
            path,
            message: "only mean-token and CLS-token pooling are supported".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_gives_unit_length_and_keeps_zero() {
        let mut vector = [3.0, 4.0];
        normalise(&mut vector);
        assert_eq!(vector, [0.6, 0.8]);
        let mut zero = [0.0, 0.0];
        normalise(&mut zero);
        assert_eq!(zero, [0.0, 0.0]);
    }

    #[test]
    fn pooling_read_from_modules() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(pooling_of(dir.path()).unwrap(), Pooling::Mean);
        std::fs::write(
            dir.path().join("modules.json"),
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#,
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        let write = |json: &str| {
            std::fs::write(dir.path().join("1_Pooling/config.json"), json).unwrap();
        };
        write(r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#);
        assert_eq!(pooling_of(dir.path()).unwrap(), Pooling::Cls);
        write(r#"{"pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true}"#);
        assert_eq!(pooling_of(dir.path()).unwrap(), Pooling::Mean);
        write(r#"{"pooling_mode_max_tokens": true}"#);
        let error = pooling_of(dir.path()).unwrap_err().to_string();
        assert!(error.contains("1_Pooling/config.json"), "{error}");
    }
}
