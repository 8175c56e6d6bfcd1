//! Pair tokenization as sentence-transformers does it: `truncation="longest_first"` up to the
//! model's max length and padding to the longest pair of the call. Whatever fixed padding or
//! truncation a saved `tokenizer.json` carries (often `Fixed(128)`) is overridden.
//!
//! The truncation is applied here, to the whole encodings of both texts, rather than by the
//! tokenizers crate's `encode`: its 0.23.2 stops tokenizing each text at `max_length` tokens
//! before deciding which text is the longer, so when both run past the budget the shorter
//! one could keep the odd extra token (transformers' `longest_first`, and the Python
//! tokenizers 0.23.3 it runs, give it to the longer).

use std::path::{Path, PathBuf};

use tokenizers::utils::parallelism::MaybeParallelIterator;
use tokenizers::{
    pad_encodings, truncate_encodings, EncodeInput, Encoding, InputSequence, PaddingDirection,
    PaddingParams, PaddingStrategy, PostProcessor, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// Token ids of a batch of pairs, row-major `[batch, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPairs {
    /// Number of pairs.
    pub batch: usize,
    /// Padded length.
    pub seq_len: usize,
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// 0 for the query segment, 1 for the document.
    pub token_type_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
}

impl EncodedPairs {
    /// The unpadded token ids of one pair.
    pub fn row_ids(&self, row: usize) -> Vec<u32> {
        let start = row * self.seq_len;
        (start..start + self.seq_len)
            .filter(|&i| self.attention_mask[i] == 1)
            .map(|i| self.input_ids[i])
            .collect()
    }
}

/// Scores pairs `batch_size` at a time in order of length (longest first, as the reference's
/// `predict` does, so batches pad little) and returns the rows in input order.
pub fn score_longest_first<E>(
    pairs: &[(&str, &str)],
    batch_size: usize,
    mut score: impl FnMut(&[(&str, &str)]) -> Result<Vec<Vec<f32>>, E>,
) -> Result<Vec<Vec<f32>>, E> {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(pairs[i].0.len() + pairs[i].1.len()));
    let mut scores = vec![Vec::new(); pairs.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<(&str, &str)> = chunk.iter().map(|&i| pairs[i]).collect();
        for (&index, row) in chunk.iter().zip(score(&batch)?) {
            scores[index] = row;
        }
    }
    Ok(scores)
}

/// [`score_longest_first`] with the batches shared out over `lanes` threads, each running
/// its batches one after another in a one-thread rayon pool (so every kernel inside runs
/// single-threaded). For inference on the CPU this beats one batch at a time on all
/// threads: nothing waits at the synchronisation points inside each matrix product and
/// element-wise pass. Results come back in input order; the first error is returned.
pub fn score_longest_first_in_lanes<E: Send>(
    pairs: &[(&str, &str)],
    batch_size: usize,
    lanes: usize,
    score: impl Fn(&[(&str, &str)]) -> Result<Vec<Vec<f32>>, E> + Sync,
) -> Result<Vec<Vec<f32>>, E> {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(pairs[i].0.len() + pairs[i].1.len()));
    let chunks: Vec<&[usize]> = order.chunks(batch_size.max(1)).collect();
    let lanes = lanes.clamp(1, chunks.len().max(1));
    if lanes == 1 {
        return score_longest_first(pairs, batch_size, score);
    }
    let score = &score;
    // Per lane: (input index, scores) of every pair it scored.
    type LaneRows = Vec<(usize, Vec<f32>)>;
    let lane_results: Vec<Result<LaneRows, E>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..lanes)
            .map(|lane| {
                let chunks = &chunks;
                scope.spawn(move || {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build();
                    let mut rows = Vec::new();
                    for chunk in chunks.iter().skip(lane).step_by(lanes) {
                        let batch: Vec<(&str, &str)> = chunk.iter().map(|&i| pairs[i]).collect();
                        let scored = match &pool {
                            Ok(pool) => pool.install(|| score(&batch))?,
                            // No pool (out of threads): score on the caller's pool instead.
                            Err(_) => score(&batch)?,
                        };
                        rows.extend(chunk.iter().copied().zip(scored));
                    }
                    Ok(rows)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut scores = vec![Vec::new(); pairs.len()];
    for lane in lane_results {
        for (index, row) in lane? {
            scores[index] = row;
        }
    }
    Ok(scores)
}

/// What can go wrong reading a tokenizer or tokenizing; the tokenizers crate's error is kept
/// as the source.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// `tokenizer.json` could not be read or parsed.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The tokenizers crate's error.
        #[source]
        source: tokenizers::Error,
    },
    /// The truncation length was refused.
    #[error("setting truncation to {max_length} tokens: {source}")]
    Truncation {
        /// The length asked for.
        max_length: usize,
        /// The tokenizers crate's error.
        #[source]
        source: tokenizers::Error,
    },
    /// A pair could not be turned into chat messages and tokens.
    #[error(transparent)]
    Chat(#[from] crate::chat::ChatError),
    /// A batch could not be tokenized.
    #[error("tokenizing a batch of {count} inputs: {source}")]
    Encode {
        /// Inputs in the batch.
        count: usize,
        /// The tokenizers crate's error.
        #[source]
        source: tokenizers::Error,
    },
}

/// A tokenizer that encodes (query, document) pairs.
#[derive(Clone)]
pub struct PairTokenizer {
    /// With our padding and truncation set, as it is saved.
    tokenizer: Tokenizer,
    /// The same without either: each text is tokenized whole, then truncated and padded here.
    untruncated: Tokenizer,
    truncation: TruncationParams,
    padding: PaddingParams,
    max_length: usize,
    /// A decoder reranker's chat format: pairs become rendered chat messages.
    chat: Option<crate::chat::ChatFormat>,
    /// The prompt applied to every pair (a decoder's leading system message), if any.
    prompt: Option<String>,
}

impl std::fmt::Debug for PairTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairTokenizer")
            .field("max_length", &self.max_length)
            .finish()
    }
}

impl PairTokenizer {
    /// Reads `tokenizer.json` and sets the reference's padding and truncation.
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self, TokenizeError> {
        let tokenizer = Tokenizer::from_file(path).map_err(|source| TokenizeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(tokenizer, max_length)
    }

    /// Wraps a tokenizer, setting the reference's padding and truncation.
    pub fn new(mut tokenizer: Tokenizer, max_length: usize) -> Result<Self, TokenizeError> {
        let pad_token = ["[PAD]", "<pad>"]
            .into_iter()
            .find(|token| tokenizer.token_to_id(token).is_some())
            .unwrap_or("[PAD]")
            .to_string();
        let pad_id = tokenizer.token_to_id(&pad_token).unwrap_or(0);
        let padding = PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        };
        let truncation = TruncationParams {
            direction: TruncationDirection::Right,
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        };
        let mut untruncated = tokenizer.clone();
        untruncated.with_padding(None);
        untruncated
            .with_truncation(None)
            .map_err(|source| TokenizeError::Truncation { max_length, source })?;
        tokenizer.with_padding(Some(padding.clone()));
        tokenizer
            .with_truncation(Some(truncation.clone()))
            .map_err(|source| TokenizeError::Truncation { max_length, source })?;
        Ok(Self {
            tokenizer,
            untruncated,
            truncation,
            padding,
            max_length,
            chat: None,
            prompt: None,
        })
    }

    /// Pairs become chat messages of `format` (decoder rerankers).
    pub fn with_chat(mut self, format: crate::chat::ChatFormat) -> Self {
        self.chat = Some(format);
        self
    }

    /// The chat format, for a decoder reranker.
    pub fn chat(&self) -> Option<&crate::chat::ChatFormat> {
        self.chat.as_ref()
    }

    /// Sets the prompt every pair gets (`None`: no prompt): a decoder's leading system
    /// message, or for an encoder a prefix of the query, as sentence-transformers applies
    /// `prompt=` to each modality.
    pub fn set_prompt(&mut self, prompt: Option<String>) {
        self.prompt = prompt;
    }

    /// The prompt every pair gets.
    pub fn prompt(&self) -> Option<&str> {
        self.prompt.as_deref()
    }

    /// The tokenizer without padding or truncation.
    pub fn untruncated(&self) -> &Tokenizer {
        &self.untruncated
    }

    /// The truncation length.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The underlying tokenizer (with our padding and truncation), e.g. to save it.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Encodes pairs with the tokenizer's prompt, padded to the longest of them.
    pub fn encode_pairs(&self, pairs: &[(&str, &str)]) -> Result<EncodedPairs, TokenizeError> {
        self.encode_pairs_with_prompt(pairs, self.prompt.as_deref())
    }

    /// Encodes pairs with this prompt (or none) instead of the tokenizer's: the trainer's
    /// per-dataset prompts, as sentence-transformers' losses pass `prompt=` to `preprocess`.
    pub fn encode_pairs_with_prompt(
        &self,
        pairs: &[(&str, &str)],
        prompt: Option<&str>,
    ) -> Result<EncodedPairs, TokenizeError> {
        if let Some(chat) = &self.chat {
            return Ok(chat.encode(&self.untruncated, pairs, prompt, self.max_length)?);
        }
        let inputs: Vec<EncodeInput> = match prompt {
            // sentence-transformers' text modality: the prompt is prepended to the first text
            // of each pair (`prepend_prompt_to_texts`).
            Some(prompt) => pairs
                .iter()
                .map(|&(query, document)| (format!("{prompt}{query}"), document.to_string()).into())
                .collect(),
            None => pairs
                .iter()
                .map(|&(query, document)| (query, document).into())
                .collect(),
        };
        self.encode_inputs(inputs)
    }

    /// Each pair's length in tokens before truncation, special tokens (or the chat
    /// template) included: what a server checks against [`Self::max_length`] when a request
    /// asks not to be truncated, and what it budgets its batches by (capped at the max
    /// length).
    pub fn token_counts(&self, pairs: &[(&str, &str)]) -> Result<Vec<usize>, TokenizeError> {
        if let Some(chat) = &self.chat {
            return pairs
                .iter()
                .map(|&(query, document)| {
                    Ok(chat
                        .encode_one(
                            &self.untruncated,
                            query,
                            document,
                            self.prompt.as_deref(),
                            usize::MAX,
                        )?
                        .len())
                })
                .collect();
        }
        let added = self
            .untruncated
            .get_post_processor()
            .map_or(0, |processor| processor.added_tokens(true));
        let prompt = self.prompt.as_deref().unwrap_or("");
        pairs
            .iter()
            .map(|&(query, document)| {
                let count = |text: &str| self.untruncated.encode(text, false).map(|e| e.len());
                Ok(count(&format!("{prompt}{query}"))? + count(document)? + added)
            })
            .collect::<tokenizers::Result<Vec<usize>>>()
            .map_err(|source| TokenizeError::Encode {
                count: pairs.len(),
                source,
            })
    }

    /// Encodes single texts (one segment each, as a sentence embedder reads them), padded
    /// to the longest of them.
    pub fn encode_texts(&self, texts: &[&str]) -> Result<EncodedPairs, TokenizeError> {
        let inputs: Vec<EncodeInput> = texts.iter().map(|&text| text.into()).collect();
        self.encode_inputs(inputs)
    }

    /// One text or pair: each text tokenized whole, truncated longest-first to the budget
    /// left by the special tokens (as the tokenizers crate's `post_process` computes it),
    /// then given its special tokens and segment ids.
    fn encode_one(&self, input: EncodeInput) -> tokenizers::Result<Encoding> {
        let tokenize = |sequence: InputSequence| self.untruncated.encode(sequence, false);
        let (first, second) = match input {
            EncodeInput::Single(text) => (tokenize(text)?, None),
            EncodeInput::Dual(query, document) => (tokenize(query)?, Some(tokenize(document)?)),
        };
        let added = self
            .untruncated
            .get_post_processor()
            .map_or(0, |processor| processor.added_tokens(second.is_some()));
        let budget = TruncationParams {
            max_length: self.truncation.max_length.saturating_sub(added),
            ..self.truncation.clone()
        };
        let (first, second) = truncate_encodings(first, second, &budget)?;
        self.untruncated.post_process(first, second, true)
    }

    fn encode_inputs(&self, inputs: Vec<EncodeInput>) -> Result<EncodedPairs, TokenizeError> {
        let count = inputs.len();
        let encodings = inputs
            .into_maybe_par_iter()
            .map(|input| self.encode_one(input))
            .collect::<tokenizers::Result<Vec<Encoding>>>()
            .and_then(|mut encodings| {
                pad_encodings(&mut encodings, &self.padding)?;
                Ok(encodings)
            })
            .map_err(|source| TokenizeError::Encode { count, source })?;
        let seq_len = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut encoded = EncodedPairs {
            batch: encodings.len(),
            seq_len,
            input_ids: Vec::with_capacity(encodings.len() * seq_len),
            token_type_ids: Vec::with_capacity(encodings.len() * seq_len),
            attention_mask: Vec::with_capacity(encodings.len() * seq_len),
        };
        for encoding in encodings.iter() {
            encoded.input_ids.extend_from_slice(encoding.get_ids());
            encoded
                .token_type_ids
                .extend_from_slice(encoding.get_type_ids());
            encoded
                .attention_mask
                .extend_from_slice(encoding.get_attention_mask());
        }
        Ok(encoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pairs of varied lengths.
    fn pairs() -> Vec<(String, String)> {
        (0..23)
            .map(|i| ("q".repeat(i % 7 + 1), "d".repeat(i * 3 % 11 + 1)))
            .collect()
    }

    #[test]
    fn lanes_give_the_same_rows_in_input_order_one_thread_each() {
        let owned = pairs();
        let pairs: Vec<(&str, &str)> = owned
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let length = |batch: &[(&str, &str)]| -> Result<Vec<Vec<f32>>, String> {
            assert!(batch.len() <= 4);
            Ok(batch
                .iter()
                .map(|(a, b)| {
                    vec![
                        (a.len() + b.len()) as f32,
                        rayon::current_num_threads() as f32,
                    ]
                })
                .collect())
        };
        let lanes = score_longest_first_in_lanes(&pairs, 4, 3, length).unwrap();
        let expected: Vec<f32> = pairs
            .iter()
            .map(|(a, b)| (a.len() + b.len()) as f32)
            .collect();
        let scored: Vec<f32> = lanes.iter().map(|row| row[0]).collect();
        assert_eq!(scored, expected);
        assert!(
            lanes.iter().all(|row| row[1] == 1.0),
            "each lane runs on one thread"
        );
        let sequential = score_longest_first(&pairs, 4, length).unwrap();
        let sequential: Vec<f32> = sequential.iter().map(|row| row[0]).collect();
        assert_eq!(sequential, expected);
    }

    #[test]
    fn a_failing_batch_fails_the_whole_call() {
        let owned = pairs();
        let pairs: Vec<(&str, &str)> = owned
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let result = score_longest_first_in_lanes(&pairs, 4, 2, |batch| {
            if batch.iter().any(|(a, _)| a.len() == 3) {
                Err(format!("bad batch of {}", batch.len()))
            } else {
                Ok(batch.iter().map(|_| vec![0.0]).collect())
            }
        });
        assert!(result.unwrap_err().starts_with("bad batch"));
    }
}
