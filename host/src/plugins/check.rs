//! `crosstrain losses check`: runs loss cases in the layout of sentence-transformers'
//! `golden_losses.json` through the registered losses and compares loss and gradient. It is the
//! conformance tool for built-ins and third-party plugins alike.
//!
//! Case layout (see the reference's README): `loss`, `config`, `kind` (`pair`, `multiclass`,
//! `margin`, `mnrl`, `listwise`), `batch_size`, `seed`, `logits` in the kind's table layout,
//! `labels`, `scored_pairs` (`[row, col]` per scored pair, in order), `expected_loss`,
//! `expected_grad` (same layout as `logits`), optionally `config_dict`. Optional per-case
//! tolerances: `loss_rtol` and `grad_atol`.

use std::collections::HashSet;

use crosstrain_plugin_api::{BatchShape, Labels, PairPlan, ScoredPair, TextRef};
use serde::Serialize;
use serde_json::Value;

use super::error::PluginError;
use super::registry::LossRegistry;

/// Default relative tolerance on the loss.
pub const LOSS_RTOL: f64 = 1e-6;
/// Default absolute tolerance on each gradient entry.
pub const GRAD_ATOL: f64 = 1e-6;

/// The outcome of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The case id.
    pub id: String,
    /// The loss it exercised.
    pub loss: String,
    /// Whether every comparison passed.
    pub passed: bool,
    /// The loss we computed.
    pub loss_value: Option<f64>,
    /// The reference loss.
    pub expected_loss: Option<f64>,
    /// |ours − expected| / |expected|.
    pub loss_relative_error: Option<f64>,
    /// max over entries of |ours − expected|.
    pub grad_max_abs_error: Option<f64>,
    /// `match`/`mismatch` when our plan was compared with the case's pairs; `sampled` when the
    /// case's pairs come from the reference's RNG and were used as given.
    pub plan: &'static str,
    /// `match`/`mismatch`/`absent` for the effective config against `config_dict`.
    pub config_dict: &'static str,
    /// What failed, if anything.
    pub problems: Vec<String>,
}

/// The table layout of a case's logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pair,
    Multiclass,
    Margin,
    Mnrl,
    Listwise,
}

/// A case turned into our terms: shape, labels, the reference's plan, logits per pair.
struct PreparedCase {
    shape: BatchShape,
    labels: Labels,
    plan: PairPlan,
    /// Where each plan pair's logits live in the case's table: (row, column).
    cells: Vec<(usize, usize)>,
    num_labels: usize,
    deterministic_plan: bool,
}

/// Runs every case in a golden-losses document (`{"cases": [...]}` or a bare array).
pub fn check_cases(registry: &LossRegistry, document: &Value) -> Result<Vec<CaseResult>, String> {
    let cases = document
        .get("cases")
        .unwrap_or(document)
        .as_array()
        .ok_or("expected a JSON object with a \"cases\" array, or an array of cases")?;
    Ok(cases
        .iter()
        .enumerate()
        .map(|(index, case)| check_case(registry, index, case))
        .collect())
}

fn check_case(registry: &LossRegistry, index: usize, case: &Value) -> CaseResult {
    let id = case
        .get("id")
        .and_then(Value::as_str)
        .map_or_else(|| format!("case {index}"), str::to_string);
    let loss_name = case
        .get("loss")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut result = CaseResult {
        id,
        loss: loss_name.clone(),
        passed: false,
        loss_value: None,
        expected_loss: case.get("expected_loss").and_then(Value::as_f64),
        loss_relative_error: None,
        grad_max_abs_error: None,
        plan: "not compared",
        config_dict: "absent",
        problems: Vec::new(),
    };
    if let Err(problem) = run_case(registry, case, &mut result) {
        result.problems.push(problem.to_string());
    }
    result.passed = result.problems.is_empty();
    result
}

/// Why a case could not be run: the loss failed (its error kept), or the case file does not
/// have the layout of `golden_losses.json`.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// Building the loss, planning or computing failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The case lacks a field or holds a value of the wrong shape.
    #[error("{0}")]
    Layout(String),
}

impl From<&str> for CaseError {
    fn from(message: &str) -> Self {
        CaseError::Layout(message.to_string())
    }
}

impl From<String> for CaseError {
    fn from(message: String) -> Self {
        CaseError::Layout(message)
    }
}

fn run_case(
    registry: &LossRegistry,
    case: &Value,
    result: &mut CaseResult,
) -> Result<(), CaseError> {
    let config = match case.get("config") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(config) => config.clone(),
    };
    let schema = &registry.find(&result.loss)?.description.config_schema;
    let config = flatten_kwargs(&config, schema)?;
    let loss = registry.build(&result.loss, &config)?;
    let prepared = prepare(case)?;
    let seed = case.get("seed").and_then(Value::as_u64).unwrap_or(0);

    if prepared.deterministic_plan {
        let ours = loss.plan(&prepared.shape, seed)?;
        if ours.pairs == prepared.plan.pairs {
            result.plan = "match";
        } else {
            result.plan = "mismatch";
            result.problems.push(format!(
                "plan differs from the case's scored_pairs ({} pairs vs {})",
                ours.len(),
                prepared.plan.len()
            ));
        }
    } else {
        result.plan = "sampled";
    }

    let table = case.get("logits").ok_or("case has no logits")?;
    let mut logits = Vec::with_capacity(prepared.cells.len() * prepared.num_labels);
    for &(row, column) in &prepared.cells {
        logits.extend(cell_values(table, row, column, prepared.num_labels)?);
    }
    let output = loss.compute(
        &prepared.plan,
        &logits,
        prepared.num_labels,
        &prepared.labels,
    )?;
    result.loss_value = Some(output.loss);

    let expected_loss = result.expected_loss.ok_or("case has no expected_loss")?;
    let relative = if expected_loss == 0.0 {
        output.loss.abs()
    } else {
        (output.loss - expected_loss).abs() / expected_loss.abs()
    };
    result.loss_relative_error = Some(relative);
    let loss_rtol = case
        .get("loss_rtol")
        .and_then(Value::as_f64)
        .unwrap_or(LOSS_RTOL);
    if relative.is_nan() || relative > loss_rtol {
        result.problems.push(format!(
            "loss {} vs expected {expected_loss} (relative error {relative:.3e} > {loss_rtol:e})",
            output.loss
        ));
    }

    // Scatter our gradient into the table layout; unscored cells stay 0.
    let expected_grad = case
        .get("expected_grad")
        .ok_or("case has no expected_grad")?;
    let mut ours_by_cell = std::collections::HashMap::<(usize, usize), Vec<f64>>::new();
    for (pair_index, &cell) in prepared.cells.iter().enumerate() {
        let slot = ours_by_cell
            .entry(cell)
            .or_insert_with(|| vec![0.0; prepared.num_labels]);
        let pair_grad = &output.grad[pair_index * prepared.num_labels..][..prepared.num_labels];
        for (total, value) in slot.iter_mut().zip(pair_grad) {
            *total += value;
        }
    }
    let max_error = gradient_error(expected_grad, &ours_by_cell, case, prepared.num_labels)?;
    result.grad_max_abs_error = Some(max_error);
    let grad_atol = case
        .get("grad_atol")
        .and_then(Value::as_f64)
        .unwrap_or(GRAD_ATOL);
    if max_error.is_nan() || max_error > grad_atol {
        result.problems.push(format!(
            "gradient differs by up to {max_error:.3e} (> {grad_atol:e})"
        ));
    }

    match case.get("config_dict") {
        None | Some(Value::Null) => {}
        Some(expected) => {
            if json_equal(&loss.effective_config(), expected) {
                result.config_dict = "match";
            } else {
                result.config_dict = "mismatch";
                result.problems.push(format!(
                    "effective config {} differs from config_dict {expected}",
                    loss.effective_config()
                ));
            }
        }
    }
    Ok(())
}

/// The largest |expected − ours| over every gradient cell, in f64.
fn gradient_error(
    expected_grad: &Value,
    ours_by_cell: &std::collections::HashMap<(usize, usize), Vec<f64>>,
    case: &Value,
    num_labels: usize,
) -> Result<f64, CaseError> {
    let kind = prepared_kind(case)?;
    let rows = expected_grad
        .as_array()
        .ok_or("expected_grad is not an array")?;
    let mut max_error: f64 = 0.0;
    for (row, row_values) in rows.iter().enumerate() {
        let expected_cells: Vec<Vec<f64>> = match kind {
            Kind::Pair => vec![vec![row_values.as_f64().ok_or("bad expected_grad")?]],
            Kind::Multiclass => vec![numbers(row_values)?],
            _ => row_values
                .as_array()
                .ok_or("bad expected_grad row")?
                .iter()
                .map(|v| v.as_f64().map(|x| vec![x]).ok_or("bad expected_grad"))
                .collect::<Result<_, _>>()?,
        };
        for (column, expected) in expected_cells.iter().enumerate() {
            let zeros = vec![0.0; num_labels];
            let ours = ours_by_cell.get(&(row, column)).unwrap_or(&zeros);
            for (e, o) in expected.iter().zip(ours) {
                let error = (e - o).abs();
                if error.is_nan() {
                    return Ok(f64::NAN);
                }
                max_error = max_error.max(error);
            }
        }
    }
    Ok(max_error)
}

fn numbers(value: &Value) -> Result<Vec<f64>, String> {
    value
        .as_array()
        .ok_or_else(|| format!("expected an array of numbers, got {value}"))?
        .iter()
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| format!("expected a number, got {v}"))
        })
        .collect()
}

fn prepared_kind(case: &Value) -> Result<Kind, CaseError> {
    match case.get("kind").and_then(Value::as_str) {
        Some("pair") => Ok(Kind::Pair),
        Some("multiclass") => Ok(Kind::Multiclass),
        Some("margin") => Ok(Kind::Margin),
        Some("mnrl") => Ok(Kind::Mnrl),
        Some("listwise") => Ok(Kind::Listwise),
        other => Err(CaseError::Layout(format!(
            "unknown case kind {other:?}; expected pair, multiclass, margin, mnrl or listwise"
        ))),
    }
}

/// The logits (as f32, as they cross the boundary) of one table cell.
fn cell_values(
    table: &Value,
    row: usize,
    column: usize,
    num_labels: usize,
) -> Result<Vec<f32>, String> {
    let row_value = table
        .get(row)
        .ok_or_else(|| format!("table has no row {row}"))?;
    let values = match row_value {
        Value::Number(n) if column == 0 && num_labels == 1 => vec![n.as_f64().unwrap_or(f64::NAN)],
        Value::Array(_) if num_labels > 1 => numbers(row_value)?,
        Value::Array(items) => vec![items
            .get(column)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("table row {row} has no column {column}"))?],
        other => return Err(format!("unexpected table cell {other}")),
    };
    Ok(values.into_iter().map(|v| v as f32).collect())
}

/// Labels as f32 rows.
/// The case layout's `*_kwargs` (`bce_kwargs`, `ce_kwargs`, `mse_kwargs`: keyword arguments
/// the reference passes on to the torch loss) merged into the loss's own config, where each
/// is a key of the same name (`reduction`, `weight`, `label_smoothing`, `ignore_index`). A
/// kwarg the loss's config schema does not have, or one given twice, is an error naming it.
fn flatten_kwargs(config: &Value, schema: &Value) -> Result<Value, CaseError> {
    let Value::Object(entries) = config else {
        return Err(CaseError::Layout(format!(
            "config is not an object: {config}"
        )));
    };
    let settings = schema.get("properties").and_then(Value::as_object);
    let mut flat = serde_json::Map::new();
    let mut forwarded = Vec::new();
    for (key, value) in entries {
        match (key.strip_suffix("_kwargs"), value) {
            (Some(_), Value::Object(kwargs)) => forwarded.push((key, kwargs)),
            (Some(_), Value::Null) => {}
            _ => {
                flat.insert(key.clone(), value.clone());
            }
        }
    }
    for (group, kwargs) in forwarded {
        for (name, value) in kwargs {
            if settings.is_some_and(|s| !s.contains_key(name)) {
                let known: Vec<&str> = settings
                    .map(|s| s.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                return Err(CaseError::Layout(format!(
                    "config {group}.{name}: the loss has no setting `{name}` to take it (its \
                     settings: {})",
                    known.join(", ")
                )));
            }
            if flat.insert(name.clone(), value.clone()).is_some() {
                return Err(CaseError::Layout(format!(
                    "config {group}.{name}: `{name}` is also given outside {group}"
                )));
            }
        }
    }
    Ok(Value::Object(flat))
}

fn label_rows(labels: &Value) -> Result<Vec<Vec<f32>>, String> {
    labels
        .as_array()
        .ok_or("labels is not an array")?
        .iter()
        .map(|row| match row {
            Value::Array(_) => Ok(numbers(row)?.into_iter().map(|v| v as f32).collect()),
            Value::Number(n) => Ok(vec![n.as_f64().unwrap_or(f64::NAN) as f32]),
            other => Err(format!("unexpected label {other}")),
        })
        .collect()
}

fn prepare(case: &Value) -> Result<PreparedCase, CaseError> {
    let kind = prepared_kind(case)?;
    let logits = case
        .get("logits")
        .and_then(Value::as_array)
        .ok_or("case has no logits array")?;
    let rows = logits.len();
    let rows_u32 = rows as u32;
    let mut pairs_raw: Vec<(usize, usize)> = case
        .get("scored_pairs")
        .and_then(Value::as_array)
        .ok_or("case has no scored_pairs")?
        .iter()
        .map(|pair| {
            let row = pair.get(0).and_then(Value::as_u64);
            let column = pair.get(1).and_then(Value::as_u64);
            match (row, column) {
                (Some(r), Some(c)) => Ok((r as usize, c as usize)),
                _ => Err(format!("bad scored pair {pair}")),
            }
        })
        .collect::<Result<_, _>>()?;
    // Gradient caching scores everything twice (a pass without graph, then the replay):
    // the plan is the first pass.
    let half = pairs_raw.len() / 2;
    if pairs_raw.len() % 2 == 0 && half > 0 && pairs_raw[..half] == pairs_raw[half..] {
        let unique: HashSet<_> = pairs_raw[..half].iter().collect();
        if unique.len() == half {
            pairs_raw.truncate(half);
        }
    }
    let labels_value = case.get("labels").unwrap_or(&Value::Null);
    let (shape, labels, num_labels, deterministic_plan) = match kind {
        Kind::Pair | Kind::Multiclass => {
            let num_labels = match kind {
                Kind::Multiclass => logits.first().and_then(Value::as_array).map_or(1, Vec::len),
                _ => 1,
            };
            // Multiclass labels are class ids, or `[B][C]` class probabilities.
            let rows_of_labels = label_rows(labels_value)?;
            let labels = match labels_value.as_array().and_then(|l| l.first()) {
                Some(Value::Array(_)) => Labels::per_row_lists(&rows_of_labels),
                _ => Labels::per_row(rows_of_labels.into_iter().flatten().collect()),
            };
            (BatchShape::texts(rows_u32, 2), labels, num_labels, true)
        }
        Kind::Margin => {
            let width = logits.first().and_then(Value::as_array).map_or(0, Vec::len);
            let labels = match labels_value.as_array().and_then(|l| l.first()) {
                Some(Value::Array(_)) => Labels::per_row_lists(&label_rows(labels_value)?),
                _ => Labels::per_row(label_rows(labels_value)?.into_iter().flatten().collect()),
            };
            (BatchShape::texts(rows_u32, 1 + width), labels, 1, true)
        }
        Kind::Mnrl => {
            let width = logits.first().and_then(Value::as_array).map_or(0, Vec::len);
            if rows == 0 || width % rows != 0 {
                return Err(CaseError::Layout(format!(
                    "mnrl logits width {width} is not a multiple of B = {rows}"
                )));
            }
            let candidate_columns = width / rows;
            let pool = candidate_columns * rows - candidate_columns;
            // The plan is deterministic when every anchor took the whole pool.
            let deterministic = case
                .get("in_batch_negatives")
                .and_then(Value::as_array)
                .is_some_and(|negatives| {
                    negatives.iter().enumerate().all(|(anchor, row)| {
                        let expected: Vec<u64> = (0..width as u64)
                            .filter(|f| (*f as usize) % rows != anchor)
                            .collect();
                        row.as_array().is_some_and(|r| {
                            r.len() == pool
                                && r.iter().map(Value::as_u64).collect::<Option<Vec<_>>>()
                                    == Some(expected)
                        })
                    })
                });
            (
                BatchShape::texts(rows_u32, 1 + candidate_columns),
                Labels::none(),
                1,
                deterministic,
            )
        }
        Kind::Listwise => {
            let lengths: Vec<u32> = logits
                .iter()
                .map(|row| row.as_array().map_or(0, |r| r.len() as u32))
                .collect();
            (
                BatchShape::query_documents(lengths),
                Labels::per_row_lists(&label_rows(labels_value)?),
                1,
                true,
            )
        }
    };
    let pairs = pairs_raw
        .iter()
        .map(|&(row, column)| scored_pair(kind, rows, row, column))
        .collect();
    let cells = match kind {
        Kind::Pair | Kind::Multiclass => pairs_raw.iter().map(|&(r, _)| (r, 0)).collect(),
        _ => pairs_raw.clone(),
    };
    Ok(PreparedCase {
        shape,
        labels,
        plan: PairPlan::new(rows_u32, pairs),
        cells,
        num_labels,
        deterministic_plan,
    })
}

/// The pair a `[row, column]` entry of `scored_pairs` stands for, per table layout.
fn scored_pair(kind: Kind, rows: usize, row: usize, column: usize) -> ScoredPair {
    let query = TextRef::cell(0, row as u32);
    let document = match kind {
        Kind::Pair | Kind::Multiclass => TextRef::cell(1, row as u32),
        Kind::Margin => TextRef::cell(1 + column as u32, row as u32),
        // Flat candidate index f = (c − 1)·B + j: column c, row j.
        Kind::Mnrl => TextRef::cell(1 + (column / rows) as u32, (column % rows) as u32),
        Kind::Listwise => TextRef::list_item(1, row as u32, column as u32),
    };
    ScoredPair::new(query, document)
}

/// JSON equality with numbers compared by value (Python writes `1.0`, we may write `1`).
pub fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, value)| y.get(key).is_some_and(|other| json_equal(value, other)))
        }
        _ => a == b,
    }
}
