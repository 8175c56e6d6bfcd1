//! Exact dense retrieval with a sentence embedder, streamed over the corpus.
//!
//! The reference embeds the whole corpus and then multiplies it with the queries in blocks.
//! Here the corpus is embedded `chunk_size` documents at a time; each chunk is scored against
//! every query and folded into per-query top-k collectors before it is dropped, so memory is
//! the query embeddings plus one chunk, whatever the corpus size. The positives' scores are
//! taken from the chunk that holds them, so no document is embedded twice.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::corpus::Corpus;
use super::topk::{Candidate, TopK};
use crosstrain_model::{ModelError, SentenceEmbedder};

/// Queries scored against one chunk at a time in blocks of this many, so the score block
/// stays at `QUERY_BLOCK × chunk_size` floats.
const QUERY_BLOCK: usize = 512;

/// The result of a dense search.
#[derive(Debug)]
pub struct DenseSearch {
    /// The `k` best documents per query, best first.
    pub candidates: Vec<Vec<Candidate>>,
    /// Cosine similarity of each requested (query, document) pair.
    pub pair_scores: Vec<f32>,
}

/// Options of a dense search.
#[derive(Debug, Clone, Copy)]
pub struct DenseOptions<'a> {
    /// Candidates kept per query.
    pub k: usize,
    /// Documents embedded (and held) at a time.
    pub chunk_size: usize,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Prepended to every query before embedding (the reference's `query_prompt`).
    pub query_prompt: Option<&'a str>,
    /// Prepended to every document before embedding (`corpus_prompt`).
    pub corpus_prompt: Option<&'a str>,
}

/// `texts` with `prompt` in front, borrowed when there is no prompt.
fn with_prompt<'t>(texts: &[&'t str], prompt: Option<&str>) -> Vec<std::borrow::Cow<'t, str>> {
    texts
        .iter()
        .map(|&text| match prompt {
            Some(prompt) => std::borrow::Cow::Owned(format!("{prompt}{text}")),
            None => std::borrow::Cow::Borrowed(text),
        })
        .collect()
}

/// Embeds queries and corpus with `embedder` and keeps the `k` most similar documents per
/// query; also scores the given (query index, document index) pairs. `on_documents` is
/// called with the number of documents embedded so far.
pub fn dense_search(
    embedder: &SentenceEmbedder,
    queries: &[&str],
    corpus: &Corpus,
    pairs: &[(usize, u32)],
    options: DenseOptions<'_>,
    on_documents: &dyn Fn(usize),
) -> Result<DenseSearch, ModelError> {
    let dimension = embedder.dimension();
    let prompted = with_prompt(queries, options.query_prompt);
    let prompted: Vec<&str> = prompted.iter().map(|t| t.as_ref()).collect();
    let query_embeddings = embedder.embed(&prompted, options.batch_size)?;
    let mut tops: Vec<TopK> = (0..queries.len()).map(|_| TopK::new(options.k)).collect();
    let mut pair_scores = vec![f32::NEG_INFINITY; pairs.len()];
    let mut pairs_by_document: HashMap<u32, Vec<usize>> = HashMap::new();
    for (slot, &(_, document)) in pairs.iter().enumerate() {
        pairs_by_document.entry(document).or_default().push(slot);
    }
    let chunk_size = options.chunk_size.max(1);
    let mut start = 0usize;
    while start < corpus.len() {
        let end = (start + chunk_size).min(corpus.len());
        let texts: Vec<&str> = (start..end).map(|i| corpus.get(i as u32)).collect();
        let texts = with_prompt(&texts, options.corpus_prompt);
        let texts: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
        let chunk = embedder.embed(&texts, options.batch_size)?;
        let chunk_tensor = Tensor::from_slice(&chunk, (end - start, dimension), &Device::Cpu)?;
        let chunk_t = chunk_tensor.t()?;
        for (block_index, block) in query_embeddings.chunks(QUERY_BLOCK * dimension).enumerate() {
            let rows = block.len() / dimension;
            let scores = Tensor::from_slice(block, (rows, dimension), &Device::Cpu)?
                .matmul(&chunk_t)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let first = block_index * QUERY_BLOCK;
            tops[first..first + rows]
                .par_iter_mut()
                .zip(scores.par_chunks(end - start))
                .for_each(|(top, row)| {
                    for (offset, &score) in row.iter().enumerate() {
                        top.push(Candidate {
                            score,
                            document: (start + offset) as u32,
                        });
                    }
                });
        }
        for document in start..end {
            let Some(slots) = pairs_by_document.get(&(document as u32)) else {
                continue;
            };
            let offset = (document - start) * dimension;
            let document_vector = &chunk[offset..offset + dimension];
            for &slot in slots {
                let query = pairs[slot].0;
                let query_vector = &query_embeddings[query * dimension..(query + 1) * dimension];
                pair_scores[slot] = query_vector
                    .iter()
                    .zip(document_vector)
                    .map(|(a, b)| a * b)
                    .sum();
            }
        }
        on_documents(end);
        start = end;
    }
    Ok(DenseSearch {
        candidates: tops.into_iter().map(TopK::into_sorted).collect(),
        pair_scores,
    })
}
