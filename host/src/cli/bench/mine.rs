//! `crosstrain bench mine`: mining end to end from files over a synthetic corpus.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::cli::mine::{mine_files, MineArgs};

#[derive(Debug, Args)]
pub struct BenchMineArgs {
    /// Anchors ((anchor, positive) rows).
    #[arg(long, default_value_t = 5000)]
    anchors: usize,
    /// Corpus documents (the positives are among them).
    #[arg(long, default_value_t = 50_000)]
    documents: usize,
    /// Negatives per anchor.
    #[arg(long, default_value_t = 5)]
    num_negatives: usize,
    /// Embedding model for the dense retriever (default: BM25).
    #[arg(long)]
    model: Option<String>,
    /// Seed of the synthetic text.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// Generates a synthetic corpus (Zipf-distributed English words, 20–40 per document) and
/// anchors (six words of their positive plus two random ones), mines it end to end from the
/// files, and prints one JSON line with the time and peak memory.
pub fn run_bench_mine(args: BenchMineArgs, out: &mut String) -> anyhow::Result<()> {
    use crosstrain_plugin_api::rng::SeededRng;
    let started = Instant::now();
    let dir = tempfile_dir()?;
    let data = dir.join("anchors.jsonl");
    let corpus = dir.join("corpus.txt");
    let output = dir.join("mined.jsonl");
    {
        let mut rng = SeededRng::new(args.seed);
        // Real English words (those of the predict benchmark's passages), so documents
        // tokenize like text: about 1.3 word pieces per word.
        let mut vocabulary: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for word in super::BENCH_PAIRS
            .split(|c: char| !c.is_alphabetic())
            .filter(|w| w.len() > 1)
        {
            let word = word.to_lowercase();
            if seen.insert(word.clone()) {
                vocabulary.push(word);
            }
        }
        // Zipf(1) over the vocabulary, sampled by inverting the cumulative weights.
        let mut cumulative = Vec::with_capacity(vocabulary.len());
        let mut total = 0f64;
        for rank in 0..vocabulary.len() {
            total += 1.0 / (rank as f64 + 1.0);
            cumulative.push(total);
        }
        let word = |rng: &mut SeededRng| -> &str {
            let x = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
            let index = cumulative
                .partition_point(|&c| c < x)
                .min(vocabulary.len() - 1);
            &vocabulary[index]
        };
        let mut documents = Vec::with_capacity(args.documents);
        for _ in 0..args.documents {
            let length = 20 + rng.below(21) as usize;
            let words: Vec<&str> = (0..length).map(|_| word(&mut rng)).collect();
            documents.push(words.join(" "));
        }
        std::fs::write(&corpus, documents.join("\n") + "\n")?;
        let mut rows = String::new();
        let stride = (args.documents / args.anchors.max(1)).max(1);
        for anchor in 0..args.anchors {
            let positive = &documents[(anchor * stride) % documents.len()];
            let words: Vec<&str> = positive.split(' ').collect();
            let mut query: Vec<&str> = (0..6)
                .map(|_| words[rng.below(words.len() as u64) as usize])
                .collect();
            query.push(word(&mut rng));
            query.push(word(&mut rng));
            writeln!(
                rows,
                "{}",
                serde_json::json!({"query": query.join(" "), "positive": positive})
            )?;
        }
        std::fs::write(&data, rows)?;
    }
    let generate_seconds = started.elapsed().as_secs_f64();
    let mut command = vec![
        "mine-hard-negatives".to_string(),
        "--data".into(),
        data.display().to_string(),
        "--corpus".into(),
        corpus.display().to_string(),
        "--output".into(),
        output.display().to_string(),
        "--num-negatives".into(),
        args.num_negatives.to_string(),
    ];
    if let Some(model) = &args.model {
        command.extend(["--model".into(), model.clone()]);
    }
    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: MineArgs,
    }
    let parsed = <Wrapper as clap::Parser>::try_parse_from(command)?;
    let result = mine_files(parsed.args);
    let _ = std::fs::remove_dir_all(&dir);
    let (summary, _) = result?;
    let line = json!({
        "bench": "mine",
        "retriever": summary["retriever"],
        "anchors": args.anchors,
        "documents": args.documents,
        "num_negatives": args.num_negatives,
        "rows": summary["rows"],
        "possible_rows": summary["possible_rows"],
        "generate_seconds": (generate_seconds * 1000.0).round() / 1000.0,
        "mine_seconds": summary["seconds"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "threads": rayon::current_num_threads(),
    });
    writeln!(out, "{line}")?;
    Ok(())
}

/// A fresh directory under the system temp dir for the benchmark's files.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("crosstrain-bench-mine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
