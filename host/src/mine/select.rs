//! Per-query filtering and selection of negatives, exactly in the reference's order:
//! positives out, absolute margin, relative margin, `max_score`, `min_score`, then the top
//! `range_max` by score, the first `range_min` dropped, and `top` or `random` sampling.

use crosstrain_plugin_api::rng::SeededRng;

use super::topk::Candidate;

/// How negatives are picked from the candidate window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingStrategy {
    /// The best-scoring `num_negatives`.
    Top,
    /// `num_negatives` drawn uniformly from the window's valid candidates, then sorted by
    /// score.
    Random,
}

super::named_values!(
    SamplingStrategy,
    "sampling strategy",
    [(Top, "top"), (Random, "random")]
);

/// The filters and window of one mining run.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Keep the query's positives among the candidates.
    pub include_positives: bool,
    /// Drop a candidate if `score + absolute_margin > min positive score`.
    pub absolute_margin: Option<f32>,
    /// Drop a candidate if `score > min_pos − |min_pos|·relative_margin`.
    pub relative_margin: Option<f32>,
    /// Drop a candidate scoring above this.
    pub max_score: Option<f32>,
    /// Drop a candidate scoring below this.
    pub min_score: Option<f32>,
    /// Ranks skipped at the top of the window.
    pub range_min: usize,
    /// Ranks considered.
    pub range_max: usize,
    /// Negatives per query.
    pub num_negatives: usize,
    /// Top or random.
    pub sampling: SamplingStrategy,
}

/// Candidates removed by each filter (counted once, by the first filter that removed them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// By `absolute_margin`.
    pub absolute_margin: usize,
    /// By `relative_margin`.
    pub relative_margin: usize,
    /// By `max_score`.
    pub max_score: usize,
    /// By `min_score`.
    pub min_score: usize,
}

impl Skipped {
    /// Adds another query's counts.
    pub fn add(&mut self, other: &Skipped) {
        self.absolute_margin += other.absolute_margin;
        self.relative_margin += other.relative_margin;
        self.max_score += other.max_score;
        self.min_score += other.min_score;
    }
}

/// A missing negative: what the reference pads with (index −1, score −inf).
pub const MISSING: Candidate = Candidate {
    score: f32::NEG_INFINITY,
    document: u32::MAX,
};

/// Whether a selected negative was found.
pub fn is_found(candidate: &Candidate) -> bool {
    candidate.score != f32::NEG_INFINITY
}

/// Picks one query's negatives. `candidates` are the retrieved documents, best first (a list
/// shorter than `range_max` is padded as missing); `positives` are the query's positive
/// documents and `positive_scores` their scores. Returns `num_negatives` entries, best first,
/// where [`MISSING`] marks a slot no valid candidate filled. `rng` is used only for
/// [`SamplingStrategy::Random`].
pub fn select_negatives(
    candidates: &[Candidate],
    positives: &[u32],
    positive_scores: &[f32],
    selection: &Selection,
    rng: &mut SeededRng,
    skipped: &mut Skipped,
) -> Vec<Candidate> {
    let mut scored: Vec<Candidate> = candidates.to_vec();
    if scored.len() < selection.range_max {
        scored.resize(selection.range_max, MISSING);
    }
    if !selection.include_positives {
        for candidate in &mut scored {
            if positives.contains(&candidate.document) {
                candidate.score = f32::NEG_INFINITY;
            }
        }
    }
    // The reference uses the *minimum* positive score (the hardest positive) for margins.
    let min_positive = positive_scores
        .iter()
        .copied()
        .fold(f32::INFINITY, f32::min);
    let mut drop_where = |count: &mut usize, rule: &dyn Fn(f32) -> bool| {
        for candidate in &mut scored {
            if is_found(candidate) && rule(candidate.score) {
                candidate.score = f32::NEG_INFINITY;
                *count += 1;
            }
        }
    };
    if let Some(margin) = selection.absolute_margin {
        drop_where(&mut skipped.absolute_margin, &|score| {
            score + margin > min_positive
        });
    }
    if let Some(margin) = selection.relative_margin {
        let threshold = min_positive - min_positive.abs() * margin;
        drop_where(&mut skipped.relative_margin, &|score| score > threshold);
    }
    if let Some(max_score) = selection.max_score {
        drop_where(&mut skipped.max_score, &|score| score > max_score);
    }
    if let Some(min_score) = selection.min_score {
        drop_where(&mut skipped.min_score, &|score| score < min_score);
    }
    scored.sort_by(Candidate::rank_order);
    scored.truncate(selection.range_max);
    let window = &scored[selection.range_min.min(scored.len())..];
    let mut chosen: Vec<Candidate> = match selection.sampling {
        SamplingStrategy::Top => window
            .iter()
            .take(selection.num_negatives)
            .copied()
            .collect(),
        SamplingStrategy::Random => {
            // As the reference: sample from the valid candidates when there are enough,
            // otherwise from the first `num_negatives` (some of which are missing).
            let valid = window.iter().filter(|c| is_found(c)).count();
            let options = valid.max(selection.num_negatives).min(window.len());
            let positions: Vec<usize> = (0..options).collect();
            let mut picked: Vec<Candidate> = rng
                .sample_without_replacement(&positions, selection.num_negatives)
                .into_iter()
                .map(|i| window[i])
                .collect();
            picked.sort_by(Candidate::rank_order);
            picked
        }
    };
    chosen.resize(selection.num_negatives, MISSING);
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(num_negatives: usize, range_max: usize) -> Selection {
        Selection {
            include_positives: false,
            absolute_margin: None,
            relative_margin: None,
            max_score: None,
            min_score: None,
            range_min: 0,
            range_max,
            num_negatives,
            sampling: SamplingStrategy::Top,
        }
    }

    /// Selects among `found` (document, score) with document 0 as the only positive; returns
    /// the chosen documents (None where missing), their scores, and the skip counts.
    fn run(
        found: &[(u32, f32)],
        positive_scores: &[f32],
        selection: &Selection,
        seed: u64,
    ) -> (Vec<Option<u32>>, Vec<f32>, Skipped) {
        let candidates: Vec<Candidate> = found
            .iter()
            .map(|&(document, score)| Candidate { score, document })
            .collect();
        let mut skipped = Skipped::default();
        let chosen = select_negatives(
            &candidates,
            &[0],
            positive_scores,
            selection,
            &mut SeededRng::new(seed),
            &mut skipped,
        );
        let documents = chosen
            .iter()
            .map(|c| is_found(c).then_some(c.document))
            .collect();
        (documents, chosen.iter().map(|c| c.score).collect(), skipped)
    }

    fn pick(
        found: &[(u32, f32)],
        positive_scores: &[f32],
        selection: &Selection,
    ) -> Vec<Option<u32>> {
        run(found, positive_scores, selection, 1).0
    }

    // Document 0 is the positive (score 0.9); the others are ranked by score.
    const FOUND: [(u32, f32); 6] = [(0, 0.9), (1, 0.85), (2, 0.7), (3, 0.6), (4, 0.4), (5, 0.2)];

    #[test]
    fn top_skips_the_positive() {
        assert_eq!(
            pick(&FOUND, &[0.9], &selection(3, 6)),
            [Some(1), Some(2), Some(3)]
        );
    }

    #[test]
    fn include_positives_keeps_it() {
        let mut s = selection(3, 6);
        s.include_positives = true;
        assert_eq!(pick(&FOUND, &[0.9], &s), [Some(0), Some(1), Some(2)]);
    }

    #[test]
    fn range_min_and_range_max_bound_the_window() {
        let mut s = selection(2, 4);
        s.range_min = 1;
        // After dropping the positive: 1, 2, 3, 4, (5); top 4 = [1, 2, 3, 4]; skip 1.
        assert_eq!(pick(&FOUND, &[0.9], &s), [Some(2), Some(3)]);
        s.range_max = 3;
        s.num_negatives = 3;
        // Window [2, 3] only: the third slot is missing.
        assert_eq!(pick(&FOUND, &[0.9], &s), [Some(2), Some(3), None]);
    }

    #[test]
    fn absolute_margin_uses_the_minimum_positive() {
        let mut s = selection(2, 6);
        s.absolute_margin = Some(0.15);
        // min positive 0.8 (of 0.9 and 0.8): drop 0.85 (1.0 > 0.8) and 0.7 (0.85 > 0.8);
        // keep 0.6 (0.75).
        let (documents, _, skipped) = run(&FOUND, &[0.9, 0.8], &s, 1);
        assert_eq!(documents, [Some(3), Some(4)]);
        assert_eq!(skipped.absolute_margin, 2);
    }

    #[test]
    fn relative_margin_scales_with_the_positive() {
        let mut s = selection(2, 6);
        s.relative_margin = Some(0.25);
        // Threshold 0.9 − 0.9·0.25 = 0.675: drop 0.85 and 0.7.
        assert_eq!(pick(&FOUND, &[0.9], &s), [Some(3), Some(4)]);
        // A negative positive score: −0.4 − 0.4·0.5 = −0.6, so only scores ≤ −0.6 stay.
        let negative = [(1, -0.5), (2, -0.65), (3, -0.9)];
        s.relative_margin = Some(0.5);
        assert_eq!(pick(&negative, &[-0.4], &s), [Some(2), Some(3)]);
    }

    #[test]
    fn max_and_min_score_bound_the_scores() {
        let mut s = selection(3, 6);
        s.max_score = Some(0.65);
        s.min_score = Some(0.3);
        let (documents, _, skipped) = run(&FOUND, &[0.9], &s, 1);
        assert_eq!(documents, [Some(3), Some(4), None]);
        assert_eq!((skipped.max_score, skipped.min_score), (2, 1));
    }

    #[test]
    fn random_draws_from_valid_candidates_sorted_by_score() {
        let mut s = selection(2, 6);
        s.sampling = SamplingStrategy::Random;
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let (documents, scores, _) = run(&FOUND, &[0.9], &s, seed);
            assert!(scores[0] > scores[1], "sorted by score");
            for document in documents {
                let document = document.expect("enough valid candidates");
                assert_ne!(document, 0);
                seen.insert(document);
            }
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        // The same seed gives the same draw.
        assert_eq!(run(&FOUND, &[0.9], &s, 7).0, run(&FOUND, &[0.9], &s, 7).0);
    }

    #[test]
    fn short_candidate_lists_are_padded_as_missing() {
        let mut s = selection(3, 5);
        s.sampling = SamplingStrategy::Random;
        // Two valid candidates: the draw is from the first three slots, one of them missing.
        let found = [(0, 0.9), (1, 0.5), (2, 0.4)];
        assert_eq!(run(&found, &[0.9], &s, 3).0, [Some(1), Some(2), None]);
    }
}
