//! A bounded "k best" collector, so a query's candidates cost O(k) memory whatever the
//! corpus size.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// One retrieved document with its retrieval score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Similarity (dense: cosine; BM25: the BM25 score; rescored: the cross-encoder's).
    pub score: f32,
    /// Corpus index.
    pub document: u32,
}

impl Candidate {
    /// Best first: higher score, then lower corpus index (torch's `topk` leaves tie order
    /// unspecified; a fixed rule keeps the output deterministic).
    pub fn rank_order(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.document.cmp(&other.document))
    }
}

/// Heap entry ordered so that the worst candidate is at the top.
#[derive(Debug, Clone, Copy)]
struct Worst(Candidate);

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        // The heap's maximum is the entry that ranks last.
        self.0.rank_order(&other.0)
    }
}

/// Keeps the `k` best candidates pushed so far.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Worst>,
}

impl TopK {
    /// A collector for `k` candidates.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// Offers one candidate.
    pub fn push(&mut self, candidate: Candidate) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Worst(candidate));
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if candidate.rank_order(&worst.0) == Ordering::Less {
                *worst = Worst(candidate);
            }
        }
    }

    /// The kept candidates, best first.
    pub fn into_sorted(self) -> Vec<Candidate> {
        let mut kept: Vec<Candidate> = self.heap.into_iter().map(|w| w.0).collect();
        kept.sort_by(Candidate::rank_order);
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(score: f32, document: u32) -> Candidate {
        Candidate { score, document }
    }

    #[test]
    fn keeps_the_best_with_ties_to_the_lower_index() {
        let mut top = TopK::new(3);
        for (score, document) in [(0.1, 0), (0.9, 1), (0.5, 2), (0.5, 3), (0.7, 4), (0.5, 5)] {
            top.push(candidate(score, document));
        }
        assert_eq!(
            top.into_sorted(),
            [candidate(0.9, 1), candidate(0.7, 4), candidate(0.5, 2)]
        );
        let mut none = TopK::new(0);
        none.push(candidate(1.0, 0));
        assert!(none.into_sorted().is_empty());
    }
}
