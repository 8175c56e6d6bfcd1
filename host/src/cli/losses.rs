//! `crosstrain losses list | show | cite | check`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use crosstrain::cite::{CROSSTRAIN_CITATION, SENTENCE_BERT_CITATION};
use crosstrain::plugins::check::{check_cases, CaseResult};
use crosstrain::plugins::{LossRegistry, RegisteredLoss};
use serde_json::{json, Value};

#[derive(Debug, Subcommand)]
pub enum LossesCommand {
    /// A table of every loss (name, library, formats, labels, citation).
    List {
        /// One JSON array on stdout instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one loss, its config schema included.
    Show {
        /// A loss name, or `library/name` when two libraries export the same name.
        name: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// BibTeX of the named losses (all when none), plus crosstrain's and Sentence-BERT's.
    Cite {
        /// Loss names.
        names: Vec<String>,
    },
    /// Run loss cases in the layout of sentence-transformers' golden_losses.json and compare
    /// loss and gradient (the conformance test for plugins).
    Check {
        /// The cases file.
        cases: PathBuf,
        /// One JSON document with per-case results.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `losses` subcommand, appending what it prints to `out`.
pub fn run(
    registry: &LossRegistry,
    command: LossesCommand,
    out: &mut String,
) -> anyhow::Result<ExitCode> {
    match command {
        LossesCommand::List { json } => {
            if json {
                let losses: Vec<Value> = registry
                    .losses()
                    .iter()
                    .map(|loss| loss_json(registry, loss))
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&losses)?)?;
            } else {
                print_table(registry, out)?;
            }
        }
        LossesCommand::Show { name, json } => {
            let loss = registry.find(&name)?;
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&loss_json(registry, loss))?
                )?;
            } else {
                print_loss(registry, loss, out)?;
            }
        }
        LossesCommand::Cite { names } => {
            let selected: Vec<&RegisteredLoss> = if names.is_empty() {
                registry.losses().iter().collect()
            } else {
                names
                    .iter()
                    .map(|name| registry.find(name))
                    .collect::<Result<_, _>>()?
            };
            // Losses that share a citation are cited once, under all their names.
            let mut citations: Vec<(Vec<&str>, &str)> = Vec::new();
            for loss in &selected {
                if let Some(citation) = loss.description.citation.as_deref() {
                    match citations.iter_mut().find(|(_, c)| *c == citation) {
                        Some((owners, _)) => owners.push(&loss.description.name),
                        None => citations.push((vec![&loss.description.name], citation)),
                    }
                }
            }
            for (owners, citation) in citations {
                writeln!(out, "% {}\n{citation}\n", owners.join(" and "))?;
            }
            writeln!(out, "% crosstrain\n{CROSSTRAIN_CITATION}\n")?;
            writeln!(out, "% Sentence-BERT (sentence-transformers, whose losses these are)\n{SENTENCE_BERT_CITATION}")?;
        }
        LossesCommand::Check { cases, json } => {
            let text = std::fs::read_to_string(&cases)
                .with_context(|| format!("reading loss cases {}", cases.display()))?;
            let document: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", cases.display()))?;
            let results = check_cases(registry, &document)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cases.display()))?;
            if results.is_empty() {
                // "0 passed, 0 failed" would read as a pass.
                anyhow::bail!(
                    "{}: no loss cases in it (golden_losses.json's layout: {{\"cases\": [...]}}); \
                     nothing was checked",
                    cases.display()
                );
            }
            let passed = results.iter().filter(|r| r.passed).count();
            let failed = results.len() - passed;
            if json {
                let report = json!({
                    "file": cases.display().to_string(),
                    "passed": passed,
                    "failed": failed,
                    "cases": results,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                for result in &results {
                    writeln!(out, "{}", case_line(result))?;
                }
                writeln!(out, "{passed} passed, {failed} failed")?;
            }
            return Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn loss_json(registry: &LossRegistry, loss: &RegisteredLoss) -> Value {
    let library = registry.library_of(loss);
    let description = &loss.description;
    json!({
        "name": description.name,
        "library": library.name,
        "library_version": library.version,
        "source": library.source.to_string(),
        "summary": description.summary,
        "citation": description.citation,
        "formats": description.formats.iter().map(|f| json!({
            "name": f.name.as_str(),
            "description": f.description.as_str(),
            "min_text_columns": f.min_text_columns,
            "max_text_columns": (f.max_text_columns != crosstrain_plugin_api::UNBOUNDED)
                .then_some(f.max_text_columns),
            "document_list": f.document_list,
            "label": f.label.describe(),
        })).collect::<Vec<_>>(),
        "num_labels": description.num_labels,
        "config_schema": description.config_schema,
        "default_config": description.default_config,
    })
}

fn num_labels_text(num_labels: u32) -> String {
    if num_labels == 0 {
        "any".to_string()
    } else {
        num_labels.to_string()
    }
}

fn print_table(registry: &LossRegistry, out: &mut String) -> std::fmt::Result {
    let rows: Vec<[String; 5]> = registry
        .losses()
        .iter()
        .map(|loss| {
            let d = &loss.description;
            [
                d.name.clone(),
                registry.library_of(loss).name.clone(),
                d.formats
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                num_labels_text(d.num_labels),
                if d.citation.is_some() { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "LIBRARY", "FORMATS", "LABELS", "CITATION"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

fn print_loss(
    registry: &LossRegistry,
    loss: &RegisteredLoss,
    out: &mut String,
) -> anyhow::Result<()> {
    let d = &loss.description;
    let library = registry.library_of(loss);
    writeln!(out, "{}", d.name)?;
    writeln!(out, "  {}", d.summary)?;
    writeln!(out)?;
    writeln!(
        out,
        "library:     {} {} ({})",
        library.name, library.version, library.source
    )?;
    writeln!(out, "num_labels:  {}", num_labels_text(d.num_labels))?;
    writeln!(out, "formats:")?;
    for format in &d.formats {
        writeln!(
            out,
            "  {:<24} {}",
            format.name.as_str(),
            format.description.as_str()
        )?;
    }
    writeln!(
        out,
        "default config:\n{}",
        indent(&serde_json::to_string_pretty(&d.default_config)?)
    )?;
    writeln!(
        out,
        "config schema:\n{}",
        indent(&serde_json::to_string_pretty(&d.config_schema)?)
    )?;
    match &d.citation {
        Some(citation) => writeln!(out, "citation:\n{}", indent(citation))?,
        None => writeln!(out, "citation:    none")?,
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn case_line(result: &CaseResult) -> String {
    let status = if result.passed { "PASS" } else { "FAIL" };
    let number = |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{v:.1e}"));
    let mut line = format!(
        "{status} {:<46} loss rel err {:>7}  grad max err {:>7}  plan {}  config {}",
        result.id,
        number(result.loss_relative_error),
        number(result.grad_max_abs_error),
        result.plan,
        result.config_dict,
    );
    for problem in &result.problems {
        line.push_str("\n     ");
        line.push_str(problem);
    }
    line
}
