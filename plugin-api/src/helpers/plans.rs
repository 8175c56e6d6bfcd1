//! The standard plans: one pair per row (pointwise losses) and every (query, document) of a
//! listwise row; and the grouping of a listwise plan's logits back by query.

use crate::author::{LossError, LossResult};
use crate::types::{BatchShape, LabelLayout, Labels, PairPlan, ScoredPair, TextRef};

use super::checks::require_text_columns;

/// `(column 0, row i)` with `(column 1, row i)` for every row: the plan of the pointwise losses.
pub fn pairwise_plan(loss: &str, shape: &BatchShape) -> LossResult<PairPlan> {
    require_text_columns(loss, shape, 2, 2, "exactly 2 text columns (text_a, text_b)")?;
    let pairs = (0..shape.rows)
        .map(|row| ScoredPair::new(TextRef::cell(0, row), TextRef::cell(1, row)))
        .collect();
    Ok(PairPlan::new(shape.rows, pairs))
}

/// The list lengths of a `(query, [documents])` batch.
pub fn listwise_lengths<'a>(loss: &str, shape: &'a BatchShape) -> LossResult<&'a [u32]> {
    let layout = "2 columns: a query and a list of documents";
    if shape.num_columns() != 2 || shape.columns[0].list_lengths().is_some() {
        return Err(LossError::new(format!(
            "{loss} expects {layout}, but the batch has {} text column(s){}",
            shape.num_columns(),
            if shape.num_columns() == 2 {
                " and the first is a list"
            } else {
                ""
            }
        )));
    }
    let lengths = shape.columns[1].list_lengths().ok_or_else(|| {
        LossError::new(format!(
            "{loss} expects {layout}, but column 1 holds one text per row"
        ))
    })?;
    if lengths.len() != shape.rows as usize {
        return Err(LossError::new(format!(
            "{loss}: {} list lengths for {} rows",
            lengths.len(),
            shape.rows
        )));
    }
    if let Some(row) = lengths.iter().position(|&n| n == 0) {
        return Err(LossError::new(format!(
            "{loss}: row {row} has an empty document list"
        )));
    }
    Ok(lengths)
}

/// `(query_i, document_ij)` for every row i and document j, row-major: the plan of the
/// listwise losses. A positive `mini_batch_size` turns on gradient caching with chunks of that
/// many pairs; the reference's `None`/0 (chunks of B pairs, graph kept) and negative values
/// (one call) change only how the forward calls are grouped, not any number, so they score
/// everything at once here.
pub fn listwise_plan(
    loss: &str,
    shape: &BatchShape,
    mini_batch_size: Option<i64>,
) -> LossResult<PairPlan> {
    let lengths = listwise_lengths(loss, shape)?;
    let mut pairs = Vec::with_capacity(lengths.iter().map(|&n| n as usize).sum());
    for (row, &length) in lengths.iter().enumerate() {
        for item in 0..length {
            pairs.push(ScoredPair::new(
                TextRef::cell(0, row as u32),
                TextRef::list_item(1, row as u32, item),
            ));
        }
    }
    let chunk = mini_batch_size
        .filter(|&size| size > 0)
        .map(|size| size as u32);
    Ok(PairPlan::new(shape.rows, pairs).with_mini_batch_size(chunk))
}

/// The scores and labels of one query of a listwise batch, with where each score came from.
pub struct ListwiseQuery {
    /// Index in the plan (and the logits) of each document, by position in the row's list.
    pub positions: Vec<usize>,
    /// The raw logits, by document position.
    pub logits: Vec<f64>,
    /// The labels, by document position.
    pub labels: Vec<f64>,
}

/// Groups a listwise plan's logits by query, checking that every document of every list was
/// scored exactly once and that each row has one label per document.
pub fn listwise_queries(
    loss: &str,
    plan: &PairPlan,
    logits: &[f32],
    labels: &Labels,
) -> LossResult<Vec<ListwiseQuery>> {
    let rows = plan.rows as usize;
    if labels.layout != LabelLayout::PerRowList || labels.rows() != rows {
        return Err(LossError::new(format!(
            "{loss} expects a list of labels per row (one per document) for {rows} rows, got {}",
            match labels.layout {
                LabelLayout::None => "no labels".to_string(),
                LabelLayout::PerRow => "one number per row".to_string(),
                LabelLayout::PerRowList => format!("lists for {} rows", labels.rows()),
            }
        )));
    }
    let mut queries: Vec<ListwiseQuery> = (0..rows)
        .map(|row| {
            let row_labels = labels.row(row);
            ListwiseQuery {
                positions: vec![usize::MAX; row_labels.len()],
                logits: vec![0.0; row_labels.len()],
                labels: row_labels.iter().map(|&v| f64::from(v)).collect(),
            }
        })
        .collect();
    for (position, pair) in plan.pairs.iter().enumerate() {
        let row = pair.text_a.row as usize;
        let item = pair.text_b.item as usize;
        let query = queries.get_mut(row).ok_or_else(|| {
            LossError::new(format!(
                "{loss}: pair {position} refers to row {row} of {rows}"
            ))
        })?;
        let slot = query.positions.get_mut(item).ok_or_else(|| {
            LossError::new(format!(
                "{loss}: row {row} has {} labels but document {item} was scored",
                query.logits.len()
            ))
        })?;
        if *slot != usize::MAX {
            return Err(LossError::new(format!(
                "{loss}: document {item} of row {row} was scored twice"
            )));
        }
        *slot = position;
        query.logits[item] = f64::from(logits[position]);
    }
    for (row, query) in queries.iter().enumerate() {
        if let Some(item) = query.positions.iter().position(|&p| p == usize::MAX) {
            return Err(LossError::new(format!(
                "{loss}: row {row} has {} labels but document {item} was not scored",
                query.labels.len()
            )));
        }
    }
    Ok(queries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listwise_plan_is_row_major_and_chunks_only_for_positive_sizes() {
        let shape = BatchShape::query_documents(vec![2, 1]);
        let plan = listwise_plan("L", &shape, Some(0)).unwrap();
        assert_eq!(plan.mini_batch_size(), None);
        assert_eq!(
            plan.pairs
                .iter()
                .map(|p| (p.text_a.row, p.text_b.item))
                .collect::<Vec<_>>(),
            vec![(0, 0), (0, 1), (1, 0)]
        );
        assert_eq!(
            listwise_plan("L", &shape, Some(3))
                .unwrap()
                .mini_batch_size(),
            Some(3)
        );
        assert!(listwise_plan("L", &BatchShape::query_documents(vec![2, 0]), None).is_err());
        assert!(listwise_plan("L", &BatchShape::texts(2, 2), None).is_err());
    }
}
