//! Pairs as chat messages, the way sentence-transformers feeds a decoder reranker: the pair
//! becomes `[{role: query}, {role: document}]` (a prompt, when given, a leading `system`
//! message), rendered with the model's chat template, tokenized whole, cut to `max_length`
//! with the template's suffix (the assistant prefill the score is read after) written back
//! over the last tokens of every cut row, and padded on the side the head needs (left for a
//! causal LM, whose score is read at the last position; right for a classifier).
//!
//! The template is rendered by minijinja, configured as transformers configures jinja2 for
//! chat templates (`trim_blocks`, `lstrip_blocks`, loop controls, Python string methods).

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::tokenize::EncodedPairs;

/// A chat template that cannot be read, rendered or used for pairs.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template file could not be read or parsed.
    #[error("{path}: {message}")]
    Template {
        /// Where the template came from.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Rendering failed.
    #[error("chat template of {path}: {message}")]
    Render {
        /// Where the template came from.
        path: PathBuf,
        /// minijinja's message.
        message: String,
    },
    /// Tokenizing the rendered text failed.
    #[error("tokenizing a rendered pair: {0}")]
    Tokenize(String),
}

/// Where a decoder pads its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    /// Pads first, so every row's last position is its last token (causal LMs).
    Left,
    /// Pads last (the classification head finds its token from the ids).
    Right,
}

/// How a decoder reranker turns pairs into token ids.
#[derive(Clone)]
pub struct ChatFormat {
    environment: std::sync::Arc<minijinja::Environment<'static>>,
    origin: PathBuf,
    /// The template's common token tail, written back over the end of a cut row.
    suffix_ids: Vec<u32>,
    padding_side: PaddingSide,
    pad_id: u32,
}

impl std::fmt::Debug for ChatFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatFormat")
            .field("origin", &self.origin)
            .field("suffix_ids", &self.suffix_ids)
            .field("padding_side", &self.padding_side)
            .finish()
    }
}

/// The template source of a model directory: `chat_template.jinja`, else the
/// `chat_template` of `tokenizer_config.json` (a string, or a list of named templates of
/// which `default` is taken). `None` when it has none.
pub fn read_template(dir: &Path) -> Result<Option<(String, PathBuf)>, ChatError> {
    let file = dir.join("chat_template.jinja");
    if file.is_file() {
        let text = std::fs::read_to_string(&file).map_err(|e| ChatError::Template {
            path: file.clone(),
            message: e.to_string(),
        })?;
        return Ok(Some((text, file)));
    }
    let config_file = dir.join("tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&config_file) else {
        return Ok(None);
    };
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ChatError::Template {
            path: config_file.clone(),
            message: e.to_string(),
        })?;
    let template = match config.get("chat_template") {
        Some(serde_json::Value::String(template)) => Some(template.clone()),
        Some(serde_json::Value::Array(named)) => named
            .iter()
            .find(|entry| entry.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|entry| entry.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        _ => None,
    };
    Ok(template.map(|template| (template, config_file)))
}

impl ChatFormat {
    /// The format of `template` (read from `origin`) with `tokenizer`. The template must
    /// render both the query and the document, as sentence-transformers requires.
    pub fn new(
        template: String,
        origin: PathBuf,
        tokenizer: &Tokenizer,
        padding_side: PaddingSide,
        pad_id: u32,
    ) -> Result<Self, ChatError> {
        let mut environment = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatError::Template {
                path: origin.clone(),
                message: e.to_string(),
            })?;
        environment.set_syntax(syntax);
        environment
            .set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        environment
            .add_template_owned("chat", template)
            .map_err(|e| ChatError::Template {
                path: origin.clone(),
                message: e.to_string(),
            })?;
        let mut format = Self {
            environment: std::sync::Arc::new(environment),
            origin,
            suffix_ids: Vec::new(),
            padding_side,
            pad_id,
        };
        // Two renders with nothing in common but the template: their common token tail is
        // the suffix, and each must show its query and document.
        let markers = [("Q0uery7", "D0ocument7"), ("Z9ebra4", "M9ango4")];
        let mut tails = Vec::new();
        for (query, document) in markers {
            let text = format.render(query, document, None)?;
            if !(text.contains(query) && text.contains(document)) {
                return Err(ChatError::Template {
                    path: format.origin.clone(),
                    message: "the chat template does not render both the query and the \
                              document (messages with roles \"query\" and \"document\")"
                        .into(),
                });
            }
            tails.push(format.tokenize(tokenizer, &text)?);
        }
        let common = tails[0]
            .iter()
            .rev()
            .zip(tails[1].iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        format.suffix_ids = tails[0][tails[0].len() - common..].to_vec();
        Ok(format)
    }

    /// The suffix written back over a cut row.
    pub fn suffix_ids(&self) -> &[u32] {
        &self.suffix_ids
    }

    /// The padding side.
    pub fn padding_side(&self) -> PaddingSide {
        self.padding_side
    }

    /// The text of one pair.
    pub fn render(
        &self,
        query: &str,
        document: &str,
        prompt: Option<&str>,
    ) -> Result<String, ChatError> {
        // Each message as the templates read it: `message["role"]`, `message["content"]`.
        let message = |role: &str, content: &str| {
            minijinja::Value::from_pairs([
                ("role", minijinja::Value::from(role)),
                ("content", minijinja::Value::from(content)),
            ])
        };
        let mut messages = Vec::with_capacity(3);
        if let Some(prompt) = prompt {
            messages.push(message("system", prompt));
        }
        messages.push(message("query", query));
        messages.push(message("document", document));
        let template = self
            .environment
            .get_template("chat")
            .map_err(|e| self.render_error(e))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
            })
            .map_err(|e| self.render_error(e))
    }

    fn render_error(&self, error: minijinja::Error) -> ChatError {
        ChatError::Render {
            path: self.origin.clone(),
            message: error.to_string(),
        }
    }

    fn tokenize(&self, tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, ChatError> {
        // The rendered text already holds every special token the model reads.
        tokenizer
            .encode(text, false)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|e| ChatError::Tokenize(e.to_string()))
    }

    /// The token ids of one pair, cut to `max_length` with the suffix written back.
    pub fn encode_one(
        &self,
        tokenizer: &Tokenizer,
        query: &str,
        document: &str,
        prompt: Option<&str>,
        max_length: usize,
    ) -> Result<Vec<u32>, ChatError> {
        let mut ids = self.tokenize(tokenizer, &self.render(query, document, prompt)?)?;
        if ids.len() >= max_length {
            ids.truncate(max_length);
            let keep = self.suffix_ids.len().min(max_length);
            let start = max_length - keep;
            ids[start..].copy_from_slice(&self.suffix_ids[self.suffix_ids.len() - keep..]);
        }
        Ok(ids)
    }

    /// Pairs as a padded batch.
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        pairs: &[(&str, &str)],
        prompt: Option<&str>,
        max_length: usize,
    ) -> Result<EncodedPairs, ChatError> {
        let rows = pairs
            .iter()
            .map(|(query, document)| {
                self.encode_one(tokenizer, query, document, prompt, max_length)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let seq_len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut encoded = EncodedPairs {
            batch: rows.len(),
            seq_len,
            input_ids: Vec::with_capacity(rows.len() * seq_len),
            token_type_ids: vec![0; rows.len() * seq_len],
            attention_mask: Vec::with_capacity(rows.len() * seq_len),
        };
        for row in rows {
            let pads = seq_len - row.len();
            let (pad_ids, pad_mask) = (
                std::iter::repeat_n(self.pad_id, pads),
                std::iter::repeat_n(0, pads),
            );
            match self.padding_side {
                PaddingSide::Left => {
                    encoded.input_ids.extend(pad_ids);
                    encoded.input_ids.extend_from_slice(&row);
                    encoded.attention_mask.extend(pad_mask);
                    encoded
                        .attention_mask
                        .extend(std::iter::repeat_n(1, row.len()));
                }
                PaddingSide::Right => {
                    encoded.input_ids.extend_from_slice(&row);
                    encoded.input_ids.extend(pad_ids);
                    encoded
                        .attention_mask
                        .extend(std::iter::repeat_n(1, row.len()));
                    encoded.attention_mask.extend(pad_mask);
                }
            }
        }
        Ok(encoded)
    }
}
