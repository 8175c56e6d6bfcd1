//! `crosstrain predict` and `crosstrain rank`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use crosstrain::data::pairs::{read_documents, read_pairs};
use crosstrain::model::{resolve_model_dir, CrossEncoder, LoadOptions, PairScorer};
use crosstrain::onnx::OnnxScorer;

/// Which engine runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The candle model (the default).
    Candle,
    /// ONNX Runtime on `MODEL/onnx/model.onnx` (see `crosstrain export-onnx`).
    Onnx,
}

/// A loaded model on either backend (`Send + Sync`: the server scores on its own thread).
pub type Scorer = Box<dyn PairScorer + Send + Sync>;

/// What to apply to the logits before printing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputActivation {
    /// Raw logits.
    None,
    /// 1 / (1 + e^-x) per logit.
    Sigmoid,
    /// Softmax over each pair's logits.
    Softmax,
}

/// Options shared by the commands that load a model.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model directory, or a Hugging Face model id (downloaded with hf-hub).
    #[arg(long)]
    pub model: String,
    /// The base model of a LoRA adapter directory, instead of the one its
    /// adapter_config.json names.
    #[arg(long, value_name = "DIR|ID")]
    pub base_model: Option<String>,
    /// Truncation length (default: the model's max length).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 32, value_parser = super::at_least_one)]
    pub batch_size: usize,
    /// The engine: candle, or ONNX Runtime on MODEL/onnx/model.onnx.
    #[arg(long, value_enum, default_value_t = Backend::Candle)]
    pub backend: Backend,
    /// candle's device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// A prompt for every pair (decoder rerankers: a leading system message, as
    /// sentence-transformers' `prompt=`).
    #[arg(long, conflicts_with = "prompt_name")]
    pub prompt: Option<String>,
    /// One of the model's saved prompts (`config_sentence_transformers.json`), by name.
    #[arg(long)]
    pub prompt_name: Option<String>,
    /// With --backend onnx: the exported file to run, relative to the model directory
    /// (default onnx/model.onnx; e.g. onnx/model_qint8_avx512_vnni.onnx from `export-onnx
    /// --quantize int8`).
    #[arg(long)]
    pub onnx_file: Option<PathBuf>,
}

impl ModelArgs {
    /// Loads the model.
    pub fn load(&self) -> anyhow::Result<CrossEncoder> {
        self.load_with(false)
    }

    /// Loads the model, with every weight drawn from the seed instead of read when
    /// `from_scratch` (the directory then needs only `config.json` and the tokenizer).
    pub fn load_with(&self, from_scratch: bool) -> anyhow::Result<CrossEncoder> {
        let options = LoadOptions {
            max_length: self.max_length,
            device: crosstrain::model::parse_device(&self.device)?,
            from_scratch,
            base_model: self.base_model.clone(),
            ..LoadOptions::default()
        };
        let mut model = CrossEncoder::load(&self.model, &options)
            .with_context(|| format!("loading model {}", self.model))?;
        if let Some(prompt) = &self.prompt {
            model.set_prompt(Some(prompt.clone()));
        } else if let Some(name) = &self.prompt_name {
            model.set_prompt_name(name)?;
        }
        Ok(model)
    }

    /// The ONNX file `--backend onnx` runs, relative to the model directory.
    pub fn onnx_file(&self) -> &std::path::Path {
        self.onnx_file
            .as_deref()
            .unwrap_or(std::path::Path::new("onnx/model.onnx"))
    }

    /// Loads the model on the chosen backend.
    pub fn scorer(&self) -> anyhow::Result<Scorer> {
        if self.backend == Backend::Candle {
            if let Some(file) = &self.onnx_file {
                anyhow::bail!(
                    "--onnx-file {} runs only with --backend onnx (the default backend is \
                     candle, which does not read it)",
                    file.display()
                );
            }
        }
        let model = self.load()?;
        match self.backend {
            Backend::Candle => Ok(Box::new(model)),
            Backend::Onnx => {
                let onnx = resolve_model_dir(&self.model)?.join(self.onnx_file());
                if onnx.is_dir() {
                    anyhow::bail!("{} is a directory, not an ONNX file", onnx.display());
                }
                if !onnx.is_file() {
                    anyhow::bail!(
                        "{} does not exist; create it with `crosstrain export-onnx --model {}`{}",
                        onnx.display(),
                        self.model,
                        match onnx.to_string_lossy() {
                            name if name.contains("qint8") => " --quantize int8",
                            name if name.contains("quint8") => " --quantize uint8",
                            _ => "",
                        }
                    );
                }
                if onnx.to_string_lossy().contains("qint8") && !crosstrain::onnx::cpu_has_vnni() {
                    tracing::warn!(
                        "{}: int8 weights on a CPU without AVX-512 VNNI, where ONNX Runtime's \
                         products saturate and scores can be far off; use the AVX2 file from \
                         `crosstrain export-onnx --quantize uint8` here",
                        onnx.display()
                    );
                }
                let scorer = OnnxScorer::for_model(&model, &onnx)
                    .with_context(|| format!("loading {}", onnx.display()))?;
                Ok(Box::new(scorer))
            }
        }
    }
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Pairs: any file `train` reads (.jsonl, .csv, .tsv with a header, .parquet); the first
    /// two text columns are the query and the document, whatever their names.
    #[arg(long)]
    pairs: PathBuf,
    /// Applied to the logits before printing.
    #[arg(long, value_enum, default_value_t = OutputActivation::None)]
    activation: OutputActivation,
    /// One JSON array of arrays (num_labels values per pair) instead of one line per pair.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RankArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The query.
    #[arg(long)]
    query: String,
    /// Documents: one per line of plain text, or the first text column of a .jsonl (bare
    /// strings too), .csv, .tsv or .parquet file.
    #[arg(long)]
    documents: PathBuf,
    /// Only the best N.
    #[arg(long, value_parser = super::at_least_one)]
    top_k: Option<usize>,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The logits of one pair after `activation`.
pub fn activate(row: &[f32], activation: OutputActivation) -> Vec<f32> {
    match activation {
        OutputActivation::None => row.to_vec(),
        OutputActivation::Sigmoid => row.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
        OutputActivation::Softmax => {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
            let total: f32 = exps.iter().sum();
            exps.iter().map(|e| e / total).collect()
        }
    }
}

pub fn predict(args: PredictArgs, out: &mut String) -> anyhow::Result<()> {
    let pairs = read_pairs(&args.pairs)?;
    let model = args.model.scorer()?;
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|p| (p.query.as_str(), p.document.as_str()))
        .collect();
    let scores = model.predict(&borrowed, args.model.batch_size)?;
    let scores: Vec<Vec<f32>> = scores
        .iter()
        .map(|row| activate(row, args.activation))
        .collect();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&scores)?)?;
    } else {
        for row in &scores {
            let cells: Vec<String> = row.iter().map(f32::to_string).collect();
            writeln!(out, "{}", cells.join("\t"))?;
        }
    }
    Ok(())
}

/// Like the reference's `CrossEncoder.rank`: the model's default activation (sigmoid for one
/// label), documents sorted by score.
pub fn rank(args: RankArgs, out: &mut String) -> anyhow::Result<()> {
    let documents = read_documents(&args.documents)?;
    let model = args.model.scorer()?;
    if model.num_labels() != 1 {
        anyhow::bail!(
            "rank needs a model with one output, {} has {}",
            args.model.model,
            model.num_labels()
        );
    }
    let pairs: Vec<(&str, &str)> = documents
        .iter()
        .map(|d| (args.query.as_str(), d.as_str()))
        .collect();
    let scores = model
        .default_activation()
        .apply(model.predict(&pairs, args.model.batch_size)?);
    let mut ranked: Vec<(usize, f32)> = scores
        .iter()
        .enumerate()
        .map(|(index, row)| (index, row[0]))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(args.top_k.unwrap_or(ranked.len()));
    if args.json {
        let entries: Vec<serde_json::Value> = ranked
            .iter()
            .map(|&(id, score)| serde_json::json!({"corpus_id": id, "score": score, "text": documents[id]}))
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&entries)?)?;
    } else {
        for (position, &(id, score)) in ranked.iter().enumerate() {
            writeln!(out, "{}\t{score:.6}\t{id}\t{}", position + 1, documents[id])?;
        }
    }
    Ok(())
}
