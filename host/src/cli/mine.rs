//! `crosstrain mine-hard-negatives` and `crosstrain convert`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use crosstrain::data::dataset::{read_dataset, DatasetSpec};
use crosstrain::mine::bm25::Bm25Params;
use crosstrain::mine::convert::{class_triplets, ConvertMode, ConvertOptions};
use crosstrain::mine::output::{write_jsonl, write_output};
use crosstrain::mine::{
    mine, read_corpus, Corpus, MineOptions, MiningInput, OutputFormat, Rescorer, Retriever,
    SamplingStrategy, ScoreStats,
};
use crosstrain::model::{
    resolve_model_dir, CrossEncoder, LoadOptions, PairScorer, SentenceEmbedder,
};
use serde_json::{json, Value};

use super::{choice, peak_rss_mb};

/// The first-stage retriever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RetrieverKind {
    /// BM25 (no model; the default without --model).
    Bm25,
    /// Cosine similarity of the --model's normalised sentence embeddings.
    Dense,
}

/// Options of `mine-hard-negatives`; the reference's snake_case names work too.
#[derive(Debug, Args)]
pub struct MineArgs {
    /// (anchor, positive) pairs: JSONL, CSV/TSV or Parquet. Repeated anchors are several
    /// positives of one query.
    #[arg(long)]
    data: PathBuf,
    /// Extra candidate documents (.txt one per line, .jsonl, .csv/.tsv/.parquet); the
    /// positives are always candidates too.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// The corpus file's text column (default: text, else document; CSV/Parquet: the first).
    #[arg(long)]
    corpus_column: Option<String>,
    /// Where to write the mined rows (JSONL).
    #[arg(long)]
    output: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    overwrite: bool,
    /// Anchor column (default: the first text column).
    #[arg(long, alias = "anchor_column_name")]
    anchor_column_name: Option<String>,
    /// Positive column (default: the second text column).
    #[arg(long, alias = "positive_column_name")]
    positive_column_name: Option<String>,
    /// Retriever (default: dense with --model, else bm25).
    #[arg(long, value_enum)]
    retriever: Option<RetrieverKind>,
    /// Sentence-embedding model directory or hub id for dense retrieval (e.g.
    /// sentence-transformers/all-MiniLM-L6-v2).
    #[arg(long)]
    model: Option<String>,
    /// Cross-encoder that rescores the candidates and positives when a margin, max_score or
    /// min_score is set (scores become its activated outputs).
    #[arg(long, alias = "cross_encoder")]
    cross_encoder: Option<String>,
    /// Skip this many top candidates.
    #[arg(long, alias = "range_min", default_value_t = 0)]
    range_min: usize,
    /// Consider only this many top candidates (default: see README).
    #[arg(long, alias = "range_max")]
    range_max: Option<usize>,
    /// Drop candidates scoring above this.
    #[arg(long, alias = "max_score", allow_negative_numbers = true)]
    max_score: Option<f32>,
    /// Drop candidates scoring below this.
    #[arg(long, alias = "min_score", allow_negative_numbers = true)]
    min_score: Option<f32>,
    /// Drop candidates with score + margin > the query's lowest positive score.
    #[arg(long, alias = "absolute_margin", allow_negative_numbers = true)]
    absolute_margin: Option<f32>,
    /// Drop candidates with score > min_pos − |min_pos|·margin.
    #[arg(long, alias = "relative_margin", allow_negative_numbers = true)]
    relative_margin: Option<f32>,
    /// Negatives per query.
    #[arg(long, alias = "num_negatives", default_value_t = 3)]
    num_negatives: usize,
    /// top or random.
    #[arg(long, alias = "sampling_strategy", value_parser = choice::<SamplingStrategy>(SamplingStrategy::NAMES), default_value = "top")]
    sampling_strategy: SamplingStrategy,
    /// Keep positives among the candidates (forces n-tuple; for reranking eval sets).
    #[arg(long, alias = "include_positives")]
    include_positives: bool,
    /// triplet, n-tuple, labeled-pair or labeled-list.
    #[arg(long, alias = "output_format", value_parser = choice::<OutputFormat>(OutputFormat::NAMES), default_value = "triplet")]
    output_format: OutputFormat,
    /// Add scores (triplet, n-tuple) or put them in place of labels (labeled-*).
    #[arg(long, alias = "output_scores")]
    output_scores: bool,
    /// Seed of random sampling.
    #[arg(long, default_value_t = 12)]
    seed: u64,
    /// Texts (or pairs, for the cross-encoder) per forward pass.
    #[arg(long, alias = "batch_size", default_value_t = 32)]
    batch_size: usize,
    /// Dense: corpus documents embedded and held at a time.
    #[arg(long, default_value_t = 16384)]
    chunk_size: usize,
    /// Dense: text put before every query when embedding it, e.g. "query: ".
    #[arg(long, alias = "query_prompt")]
    query_prompt: Option<String>,
    /// Dense: text put before every document when embedding it, e.g. "passage: ".
    #[arg(long, alias = "corpus_prompt")]
    corpus_prompt: Option<String>,
    /// Dense: truncation length (default: the model's max_seq_length).
    #[arg(long)]
    max_length: Option<usize>,
    /// BM25 term-frequency saturation.
    #[arg(long, default_value_t = 1.2, allow_negative_numbers = true)]
    bm25_k1: f32,
    /// BM25 length normalisation.
    #[arg(long, default_value_t = 0.75, allow_negative_numbers = true)]
    bm25_b: f32,
    /// Where the embedding model and cross-encoder run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print one JSON line instead of the statistics table.
    #[arg(long)]
    json: bool,
}

/// A progress bar per stage on stderr (hidden when stderr is not a terminal).
struct StageProgress {
    current: Mutex<Option<(String, indicatif::ProgressBar)>>,
}

impl StageProgress {
    fn new() -> Self {
        Self {
            current: Mutex::new(None),
        }
    }

    fn update(&self, stage: &str, done: usize, total: usize) {
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        if current.as_ref().is_none_or(|(name, _)| name != stage) {
            if let Some((_, bar)) = current.take() {
                bar.finish();
            }
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>10} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(stage.to_string());
            *current = Some((stage.to_string(), bar));
        }
        if let Some((_, bar)) = current.as_ref() {
            bar.set_position(done as u64);
        }
    }

    fn finish(&self) {
        if let Ok(mut current) = self.current.lock() {
            if let Some((_, bar)) = current.take() {
                bar.finish();
            }
        }
    }
}

pub fn run_mine(args: MineArgs, out: &mut String) -> anyhow::Result<()> {
    let json = args.json;
    let (summary, table) = mine_files(args)?;
    if json {
        writeln!(out, "{summary}")?;
    } else {
        out.push_str(&table);
    }
    Ok(())
}

/// Mines as the command line says; returns the JSON summary and the human-readable report.
pub(super) fn mine_files(args: MineArgs) -> anyhow::Result<(Value, String)> {
    let started = Instant::now();
    let options = MineOptions {
        range_min: args.range_min,
        range_max: args.range_max,
        max_score: args.max_score,
        min_score: args.min_score,
        absolute_margin: args.absolute_margin,
        relative_margin: args.relative_margin,
        num_negatives: args.num_negatives,
        sampling_strategy: args.sampling_strategy,
        include_positives: args.include_positives,
        output_format: args.output_format,
        output_scores: args.output_scores,
        seed: args.seed,
    };
    if !(args.bm25_k1.is_finite() && args.bm25_k1 >= 0.0) {
        anyhow::bail!(
            "--bm25-k1 {}: must be 0 or more (BM25's term-frequency saturation; 1.2 usual)",
            args.bm25_k1
        );
    }
    if !(0.0..=1.0).contains(&args.bm25_b) {
        anyhow::bail!(
            "--bm25-b {}: must be in [0, 1] (BM25's length normalisation; 0.75 usual)",
            args.bm25_b
        );
    }
    let mut inputs: Vec<(&str, &std::path::Path)> = vec![("--data", args.data.as_path())];
    if let Some(corpus) = &args.corpus {
        inputs.push(("--corpus", corpus.as_path()));
    }
    crosstrain::fsutil::check_output_is_no_input(&args.output, &inputs)
        .map_err(anyhow::Error::msg)?;
    if args.output.exists() && !args.overwrite {
        anyhow::bail!(
            "{} already exists; pass --overwrite to replace it",
            args.output.display()
        );
    }
    if args.include_positives && args.output_format != OutputFormat::NTuple {
        tracing::warn!(
            "--include-positives writes the n-tuple format, whatever --output-format says"
        );
    }
    let retriever_kind = args.retriever.unwrap_or(if args.model.is_some() {
        RetrieverKind::Dense
    } else {
        RetrieverKind::Bm25
    });

    let dataset = read_dataset(&DatasetSpec::from_files(vec![args.data.clone()]))?;
    let mut corpus = Corpus::new();
    let corpus_documents = match &args.corpus {
        Some(path) => read_corpus(path, args.corpus_column.as_deref(), &mut corpus)?,
        None => 0,
    };
    let input = MiningInput::from_dataset(
        &dataset,
        args.anchor_column_name.as_deref(),
        args.positive_column_name.as_deref(),
        &mut corpus,
    )?;
    drop(dataset);

    let device = crosstrain::model::parse_device(&args.device)?;
    let embedder = match retriever_kind {
        RetrieverKind::Bm25 => None,
        RetrieverKind::Dense => {
            let spec = args
                .model
                .as_deref()
                .context("--retriever dense needs --model (a sentence-embedding model)")?;
            let dir = resolve_model_dir(spec)?;
            Some(
                SentenceEmbedder::load_dir(&dir, &device, args.max_length)
                    .with_context(|| format!("loading embedding model {spec}"))?,
            )
        }
    };
    let retriever = match &embedder {
        None => Retriever::Bm25(Bm25Params {
            k1: args.bm25_k1,
            b: args.bm25_b,
        }),
        Some(embedder) => Retriever::Dense {
            embedder,
            chunk_size: args.chunk_size,
            batch_size: args.batch_size,
            query_prompt: args.query_prompt.as_deref(),
            corpus_prompt: args.corpus_prompt.as_deref(),
        },
    };
    let cross_encoder = match &args.cross_encoder {
        Some(spec) => {
            let load_options = LoadOptions {
                device: device.clone(),
                ..LoadOptions::default()
            };
            let model = CrossEncoder::load(spec, &load_options)
                .with_context(|| format!("loading cross-encoder {spec}"))?;
            if model.num_labels() != 1 {
                anyhow::bail!(
                    "cross-encoder {spec} has {} outputs; rescoring needs a 1-label model",
                    model.num_labels()
                );
            }
            let filters = [
                options.absolute_margin,
                options.relative_margin,
                options.max_score,
                options.min_score,
            ];
            if filters.iter().all(Option::is_none) {
                tracing::warn!(
                    "--cross-encoder rescores only when a margin, max_score or min_score is set \
                     (as the reference); it is unused here"
                );
            }
            Some(model)
        }
        None => None,
    };
    let rescorer = cross_encoder.as_ref().map(|model| Rescorer {
        scorer: model as &dyn PairScorer,
        batch_size: args.batch_size,
    });

    let progress = StageProgress::new();
    let mined = mine(
        &input,
        &corpus,
        &retriever,
        rescorer,
        &options,
        &|stage, done, total| progress.update(stage, done, total),
    )?;
    progress.finish();
    let written = write_output(
        &args.output,
        &input,
        &corpus,
        &mined,
        &options,
        args.overwrite,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = json!({
        "positive": ScoreStats::of(&mined.positive_scores),
        "negative": ScoreStats::of(&written.negative_scores),
        "difference": ScoreStats::of(&written.differences),
    });
    let summary = json!({
        "output": args.output.display().to_string(),
        "output_format": options.effective_format().name(),
        "retriever": format!("{retriever_kind:?}").to_lowercase(),
        "rescored": mined.rescored,
        "rows_read": input.rows,
        "queries": input.queries.len(),
        "corpus_documents_read": corpus_documents,
        "corpus": corpus.len(),
        "range_max": mined.selection.range_max,
        "retrieved_per_query": mined.retrieved_per_query,
        "rows": written.rows,
        "possible_rows": written.possible_rows,
        "skipped": mined.skipped,
        "stats": stats,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "peak_rss_mb": peak_rss_mb().map(|mb| (mb * 10.0).round() / 10.0),
    });
    let mut out = String::new();
    writeln!(
        out,
        "{} queries ({} rows), corpus of {} documents, {} retrieval{}: wrote {} rows to {} in {:.1} s",
        input.queries.len(),
        input.rows,
        corpus.len(),
        summary["retriever"].as_str().unwrap_or_default(),
        if mined.rescored { " + cross-encoder rescoring" } else { "" },
        written.rows,
        args.output.display(),
        seconds
    )?;
    write_stats_table(&mut out, &summary["stats"])?;
    for (name, count) in [
        ("absolute_margin", mined.skipped.absolute_margin),
        ("relative_margin", mined.skipped.relative_margin),
        ("max_score", mined.skipped.max_score),
        ("min_score", mined.skipped.min_score),
    ] {
        if count > 0 {
            writeln!(out, "Skipped {count} potential negatives due to {name}.")?;
        }
    }
    let missing = written.possible_rows.saturating_sub(written.rows);
    if missing > 0 {
        writeln!(
            out,
            "Could not find enough negatives for {missing} of {} possible rows ({:.2}%); \
             consider a larger range_max{}.",
            written.possible_rows,
            100.0 * missing as f64 / written.possible_rows.max(1) as f64,
            if args.model.is_none() {
                ", a bigger corpus, or the dense retriever"
            } else {
                ""
            }
        )?;
    }
    Ok((summary, out))
}

/// The reference's statistics table (positive, negative and difference scores).
fn write_stats_table(out: &mut String, stats: &Value) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<6} {:>14} {:>14} {:>14}",
        "Metric", "Positive", "Negative", "Difference"
    )?;
    let cell = |column: &str, key: &str| -> String {
        match stats[column].get(key) {
            Some(Value::Number(n)) if key == "count" => n.to_string(),
            Some(Value::Number(n)) => format!("{:.4}", n.as_f64().unwrap_or(f64::NAN)),
            _ => String::new(),
        }
    };
    for (label, key) in [
        ("Count", "count"),
        ("Mean", "mean"),
        ("Median", "median"),
        ("Std", "std"),
        ("Min", "min"),
        ("25%", "q25"),
        ("50%", "q50"),
        ("75%", "q75"),
        ("Max", "max"),
    ] {
        writeln!(
            out,
            "{label:<6} {:>14} {:>14} {:>14}",
            cell("positive", key),
            cell("negative", key),
            if key == "count" {
                String::new()
            } else {
                cell("difference", key)
            }
        )?;
    }
    Ok(())
}

/// Options of `convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Class-labelled data (JSONL, CSV/TSV, Parquet): text column(s) and a label column.
    #[arg(long)]
    data: PathBuf,
    /// Where to write the (anchor, positive, negative) triplets (JSONL).
    #[arg(long)]
    output: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    overwrite: bool,
    /// sentence-class (every text has the row's class) or pair-class (the label relates the
    /// second text to the first); default: by the number of text columns (1 or 2).
    #[arg(long, value_parser = choice::<ConvertMode>(ConvertMode::NAMES))]
    mode: Option<ConvertMode>,
    /// pair-class: the label of positive pairs.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    positive_label: f32,
    /// Triplets per anchor (sentence-class) or per positive pair (pair-class).
    #[arg(long, default_value_t = 1)]
    triplets_per_anchor: usize,
    /// Seed of the draws.
    #[arg(long, default_value_t = 12)]
    seed: u64,
}

pub fn run_convert(args: ConvertArgs, out: &mut String) -> anyhow::Result<()> {
    crosstrain::fsutil::check_output_is_no_input(&args.output, &[("--data", &args.data)])
        .map_err(anyhow::Error::msg)?;
    let dataset = read_dataset(&DatasetSpec::from_files(vec![args.data.clone()]))?;
    let options = ConvertOptions {
        mode: args.mode,
        positive_label: args.positive_label,
        triplets_per_anchor: args.triplets_per_anchor,
        seed: args.seed,
    };
    let converted = class_triplets(&dataset, &options)?;
    if converted.triplets.is_empty() {
        anyhow::bail!(
            "{}: no triplet could be built ({} anchors skipped: each needs another text of its \
             class and one of a different class)",
            args.data.display(),
            converted.skipped
        );
    }
    write_jsonl(&args.output, args.overwrite, &mut |emit| {
        for triplet in &converted.triplets {
            let mut row = serde_json::Map::new();
            row.insert("anchor".into(), Value::from(triplet.anchor.as_str()));
            row.insert("positive".into(), Value::from(triplet.positive.as_str()));
            row.insert("negative".into(), Value::from(triplet.negative.as_str()));
            emit(row)?;
        }
        Ok(())
    })?;
    let mode = match converted.mode {
        Some(ConvertMode::PairClass) => "pair-class",
        _ => "sentence-class",
    };
    writeln!(
        out,
        "wrote {} triplets to {} ({mode}; {} anchors skipped)",
        converted.triplets.len(),
        args.output.display(),
        converted.skipped
    )?;
    Ok(())
}
