//! BM25 retrieval, the built-in default retriever: no model, no GPU, and exact.
//!
//! Scoring is Lucene's BM25 (the flavour Elasticsearch and Pyserini use): for every query
//! token `t` (repeats count again, as in `rank_bm25`),
//! `idf(t) · tf·(k1+1) / (tf + k1·(1 − b + b·|d|/avgdl))` with
//! `idf(t) = ln(1 + (N − df + 0.5) / (df + 0.5))`, which is never negative. Tokens are
//! lower-cased runs of letters and digits; there is no stemming and no stop list.

use std::collections::HashMap;

use rayon::prelude::*;

use super::corpus::Corpus;
use super::topk::{Candidate, TopK};

/// BM25's two knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25Params {
    /// Term-frequency saturation (default 1.2, Lucene's).
    pub k1: f32,
    /// Length normalisation (default 0.75).
    pub b: f32,
}

impl Default for Bm25Params {
    fn default() -> Self {
        Self { k1: 1.2, b: 0.75 }
    }
}

/// Lower-cased runs of alphanumeric characters.
pub fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|token| !token.is_empty())
        .map(str::to_lowercase)
}

/// An inverted index over a corpus.
#[derive(Debug)]
pub struct Bm25Index {
    params: Bm25Params,
    vocabulary: HashMap<String, u32>,
    /// Per term: (document, term frequency), by document.
    postings: Vec<Vec<(u32, u32)>>,
    document_lengths: Vec<u32>,
    average_length: f32,
}

impl Bm25Index {
    /// Indexes every document of `corpus`.
    pub fn build(corpus: &Corpus, params: Bm25Params) -> Self {
        let mut vocabulary: HashMap<String, u32> = HashMap::new();
        let mut postings: Vec<Vec<(u32, u32)>> = Vec::new();
        let mut document_lengths = Vec::with_capacity(corpus.len());
        let mut term_ids = Vec::new();
        for (document, text) in corpus.iter().enumerate() {
            term_ids.clear();
            for token in tokens(text) {
                let next = vocabulary.len() as u32;
                let id = *vocabulary.entry(token).or_insert(next);
                if id as usize == postings.len() {
                    postings.push(Vec::new());
                }
                term_ids.push(id);
            }
            document_lengths.push(term_ids.len() as u32);
            term_ids.sort_unstable();
            for run in term_ids.chunk_by(|a, b| a == b) {
                postings[run[0] as usize].push((document as u32, run.len() as u32));
            }
        }
        let total: u64 = document_lengths.iter().map(|&n| u64::from(n)).sum();
        let average_length = if document_lengths.is_empty() {
            1.0
        } else {
            (total as f64 / document_lengths.len() as f64).max(1e-9) as f32
        };
        Self {
            params,
            vocabulary,
            postings,
            document_lengths,
            average_length,
        }
    }

    /// Number of indexed documents.
    pub fn len(&self) -> usize {
        self.document_lengths.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.document_lengths.is_empty()
    }

    fn idf(&self, term: u32) -> f32 {
        let n = self.len() as f32;
        let df = self.postings[term as usize].len() as f32;
        (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
    }

    fn term_weight(&self, idf: f32, tf: u32, document: u32) -> f32 {
        let Bm25Params { k1, b } = self.params;
        let tf = tf as f32;
        let length = self.document_lengths[document as usize] as f32;
        idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * length / self.average_length))
    }

    /// The query's known terms with their idf, in query order (repeats kept).
    fn query_terms(&self, query: &str) -> Vec<(u32, f32)> {
        tokens(query)
            .filter_map(|token| self.vocabulary.get(&token).copied())
            .map(|term| (term, self.idf(term)))
            .collect()
    }

    /// The BM25 score of one indexed document for `query` (0 when they share no term). Sums
    /// in the same order as [`Bm25Index::search`], so the two agree to the bit.
    pub fn score(&self, query: &str, document: u32) -> f32 {
        let mut score = 0f32;
        for (term, idf) in self.query_terms(query) {
            let posting = &self.postings[term as usize];
            if let Ok(at) = posting.binary_search_by_key(&document, |&(d, _)| d) {
                score += self.term_weight(idf, posting[at].1, document);
            }
        }
        score
    }

    /// The `k` best documents per query, best first. Only documents that share a term with
    /// the query are candidates; a query with fewer gets a shorter list.
    pub fn search(
        &self,
        queries: &[&str],
        k: usize,
        on_query_done: &(dyn Fn() + Sync),
    ) -> Vec<Vec<Candidate>> {
        queries
            .par_iter()
            .map_init(
                || (vec![0f32; self.len()], Vec::<u32>::new()),
                |(scores, touched), query| {
                    for (term, idf) in self.query_terms(query) {
                        for &(document, tf) in &self.postings[term as usize] {
                            let slot = &mut scores[document as usize];
                            if *slot == 0.0 {
                                touched.push(document);
                            }
                            *slot += self.term_weight(idf, tf, document);
                        }
                    }
                    let mut top = TopK::new(k);
                    for &document in touched.iter() {
                        top.push(Candidate {
                            score: scores[document as usize],
                            document,
                        });
                        scores[document as usize] = 0.0;
                    }
                    touched.clear();
                    on_query_done();
                    top.into_sorted()
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(texts: &[&str]) -> Corpus {
        let mut corpus = Corpus::new();
        for text in texts {
            corpus.insert(text);
        }
        corpus
    }

    #[test]
    fn tokens_are_lowercased_alphanumeric_runs() {
        let found: Vec<String> = tokens("Mars' 2 moons: Phobos & Deimos!").collect();
        assert_eq!(found, ["mars", "2", "moons", "phobos", "deimos"]);
    }

    #[test]
    fn scores_match_hand_computation() {
        // Lengths 2, 3, 1 → avgdl 2. "mars" is in documents 0 and 1: idf = ln(1 + 1.5/2.5).
        let corpus = corpus(&["mars moons", "red planet mars", "venus"]);
        let index = Bm25Index::build(&corpus, Bm25Params::default());
        let idf_mars = (1.0f32 + 1.5 / 2.5).ln();
        let idf_moons = (1.0f32 + 2.5 / 1.5).ln();
        let weight = |idf: f32, tf: f32, len: f32| {
            idf * tf * 2.2 / (tf + 1.2 * (1.0 - 0.75 + 0.75 * len / 2.0))
        };
        let expected0 = weight(idf_mars, 1.0, 2.0) + weight(idf_moons, 1.0, 2.0);
        let expected1 = weight(idf_mars, 1.0, 3.0);
        assert!((index.score("Mars moons?", 0) - expected0).abs() < 1e-6);
        assert!((index.score("Mars moons?", 1) - expected1).abs() < 1e-6);
        assert_eq!(index.score("Mars moons?", 2), 0.0);
        let found = index.search(&["Mars moons?"], 5, &|| ());
        assert_eq!(found.len(), 1);
        let documents: Vec<u32> = found[0].iter().map(|c| c.document).collect();
        assert_eq!(documents, [0, 1], "document 2 shares no term");
        assert_eq!(found[0][0].score, index.score("Mars moons?", 0));
        assert_eq!(found[0][1].score, index.score("Mars moons?", 1));
    }
}
