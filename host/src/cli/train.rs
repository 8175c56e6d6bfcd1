//! `crosstrain train`: a TOML recipe plus command-line overrides in, a model directory out.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use crosstrain::plugins::LossRegistry;
use crosstrain::train::config::{canonical_key, set_key, set_value, TrainConfig};
use crosstrain::train::{train, RunOptions, TrainProgress};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The recipe (TOML); every key can also be given below or with --set.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Start model: directory or Hugging Face id (`model`).
    #[arg(long)]
    model: Option<String>,
    /// Initialise every weight instead of reading model.safetensors (`from_scratch`).
    #[arg(long)]
    from_scratch: bool,
    /// The base model of a LoRA adapter directory given as --model, instead of the one its
    /// adapter_config.json names (`base_model`).
    #[arg(long, value_name = "DIR|ID")]
    base_model: Option<String>,
    /// Keep a LoRA run's frozen base in f32 or bf16 (`base_dtype`).
    #[arg(long, value_name = "f32|bf16")]
    base_dtype: Option<String>,
    /// Output directory (`output`).
    #[arg(long)]
    output: Option<PathBuf>,
    /// cpu, cuda or cuda:N (`device`).
    #[arg(long)]
    device: Option<String>,
    /// Loss name (`loss`).
    #[arg(long)]
    loss: Option<String>,
    /// `learning_rate_mapping` as JSON, as sentence-transformers takes it stringified, e.g.
    /// '{"classifier": 1e-4}': parameter-name pattern → learning rate.
    #[arg(long, value_name = "JSON")]
    learning_rate_mapping: Option<String>,
    /// Loss config as JSON, e.g. '{"scale": 20}' (`loss_config`).
    #[arg(long)]
    loss_config: Option<String>,
    /// Training data file; repeat for several (`train.files`).
    #[arg(long = "train")]
    train_files: Vec<PathBuf>,
    /// Evaluation-loss data file (`eval.files`).
    #[arg(long = "eval")]
    eval_files: Vec<PathBuf>,
    /// `num_train_epochs` (alias `epochs`); may be fractional.
    #[arg(long, visible_alias = "num-train-epochs")]
    epochs: Option<f64>,
    /// `max_steps`.
    #[arg(long)]
    max_steps: Option<usize>,
    /// `per_device_train_batch_size` (alias `batch_size`).
    #[arg(long, visible_alias = "per-device-train-batch-size")]
    batch_size: Option<usize>,
    /// `learning_rate` (alias `lr`).
    #[arg(long, visible_alias = "learning-rate")]
    lr: Option<f64>,
    /// `warmup_ratio`.
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// `max_length`.
    #[arg(long)]
    max_length: Option<usize>,
    /// `seed`.
    #[arg(long)]
    seed: Option<u64>,
    /// `gradient_accumulation_steps`.
    #[arg(long)]
    gradient_accumulation_steps: Option<usize>,
    /// `mini_batch_size` (gradient caching chunk, pairs).
    #[arg(long)]
    mini_batch_size: Option<usize>,
    /// `logging_steps` (below 1: a fraction of the run's steps).
    #[arg(long)]
    logging_steps: Option<f64>,
    /// `eval_steps` (below 1: a fraction of the run's steps).
    #[arg(long)]
    eval_steps: Option<f64>,
    /// `save_steps` (0: no checkpoints; below 1: a fraction of the run's steps).
    #[arg(long)]
    save_steps: Option<f64>,
    /// `stop_at_step`: stop after this step's checkpoint, as an interruption would.
    #[arg(long)]
    stop_at_step: Option<usize>,
    /// TrainingArguments settings by their names, each a TOML value like `--set`'s.
    #[command(flatten)]
    named: NamedSettings,
    /// Skip the ONNX export (`export_onnx = false`).
    #[arg(long)]
    no_export_onnx: bool,
    /// Any key: KEY=VALUE with a TOML value, dotted for tables (e.g. train.limit=100).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Replace a non-empty output directory.
    #[arg(long)]
    overwrite: bool,
    /// Continue from a checkpoint (default: the latest under the output directory).
    #[arg(long, num_args = 0..=1, value_name = "CHECKPOINT")]
    resume: Option<Option<PathBuf>>,
    /// With --resume: let this setting differ from the checkpoint's (e.g. lr); repeatable.
    /// Each change is logged; any other change is refused.
    #[arg(long = "allow-change", value_name = "KEY")]
    allow_change: Vec<String>,
    /// Print the config's JSON schema and exit.
    #[arg(long)]
    print_schema: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The TrainingArguments settings that have no crosstrain flag of their own, as long flags of
/// the same names (`--weight-decay 0.01`, `--lr-scheduler-type cosine`).
#[derive(Debug, Args)]
struct NamedSettings {
    /// `per_device_eval_batch_size`.
    #[arg(long, value_name = "N")]
    per_device_eval_batch_size: Option<String>,
    /// `weight_decay`.
    #[arg(long, value_name = "X")]
    weight_decay: Option<String>,
    /// `warmup_steps` (below 1: a fraction of the run's steps).
    #[arg(long, value_name = "N")]
    warmup_steps: Option<String>,
    /// `adam_beta1`.
    #[arg(long, value_name = "X")]
    adam_beta1: Option<String>,
    /// `adam_beta2`.
    #[arg(long, value_name = "X")]
    adam_beta2: Option<String>,
    /// `adam_epsilon`.
    #[arg(long, value_name = "X")]
    adam_epsilon: Option<String>,
    /// `max_grad_norm`.
    #[arg(long, value_name = "X")]
    max_grad_norm: Option<String>,
    /// `lr_scheduler_type`: linear, constant, constant_with_warmup, cosine,
    /// cosine_with_restarts, polynomial, cosine_with_min_lr, cosine_warmup_with_min_lr,
    /// warmup_stable_decay, inverse_sqrt, reduce_lr_on_plateau (parameters:
    /// `--set lr_scheduler_kwargs.NAME=VALUE`).
    #[arg(long, value_name = "NAME")]
    lr_scheduler_type: Option<String>,
    /// `eval_strategy`: no, steps, epoch.
    #[arg(long, value_name = "WHEN")]
    eval_strategy: Option<String>,
    /// `save_strategy`: no, steps, epoch, best.
    #[arg(long, value_name = "WHEN")]
    save_strategy: Option<String>,
    /// `early_stopping_patience`: evaluations without improvement before stopping.
    #[arg(long, value_name = "N")]
    early_stopping_patience: Option<String>,
    /// `early_stopping_threshold`: the improvement that counts.
    #[arg(long, value_name = "X")]
    early_stopping_threshold: Option<String>,
    /// `train_sampling_strategy`: random, sequential, group_by_length.
    #[arg(long, value_name = "NAME")]
    train_sampling_strategy: Option<String>,
    /// `report_to`: tensorboard or none.
    #[arg(long, value_name = "NAME")]
    report_to: Option<String>,
    /// `logging_dir`: TensorBoard's folder (default OUTPUT/runs).
    #[arg(long, value_name = "DIR")]
    logging_dir: Option<String>,
    /// `save_total_limit`.
    #[arg(long, value_name = "N")]
    save_total_limit: Option<String>,
    /// `load_best_model_at_end` (true/false).
    #[arg(long, value_name = "BOOL")]
    load_best_model_at_end: Option<String>,
    /// `metric_for_best_model`.
    #[arg(long, value_name = "NAME")]
    metric_for_best_model: Option<String>,
    /// `greater_is_better` (true/false).
    #[arg(long, value_name = "BOOL")]
    greater_is_better: Option<String>,
    /// `eval_on_start` (true/false).
    #[arg(long, value_name = "BOOL")]
    eval_on_start: Option<String>,
    /// `batch_sampler`: batch_sampler, no_duplicates, group_by_label.
    #[arg(long, value_name = "NAME")]
    batch_sampler: Option<String>,
    /// `multi_dataset_batch_sampler`: proportional, round_robin.
    #[arg(long, value_name = "NAME")]
    multi_dataset_batch_sampler: Option<String>,
}

impl NamedSettings {
    /// Each setting's key and the value given, if any.
    fn pairs(&self) -> [(&'static str, Option<&str>); 22] {
        [
            (
                "per_device_eval_batch_size",
                self.per_device_eval_batch_size.as_deref(),
            ),
            ("weight_decay", self.weight_decay.as_deref()),
            ("warmup_steps", self.warmup_steps.as_deref()),
            ("adam_beta1", self.adam_beta1.as_deref()),
            ("adam_beta2", self.adam_beta2.as_deref()),
            ("adam_epsilon", self.adam_epsilon.as_deref()),
            ("max_grad_norm", self.max_grad_norm.as_deref()),
            ("lr_scheduler_type", self.lr_scheduler_type.as_deref()),
            ("eval_strategy", self.eval_strategy.as_deref()),
            ("save_strategy", self.save_strategy.as_deref()),
            (
                "early_stopping_patience",
                self.early_stopping_patience.as_deref(),
            ),
            (
                "early_stopping_threshold",
                self.early_stopping_threshold.as_deref(),
            ),
            (
                "train_sampling_strategy",
                self.train_sampling_strategy.as_deref(),
            ),
            ("report_to", self.report_to.as_deref()),
            ("logging_dir", self.logging_dir.as_deref()),
            ("save_total_limit", self.save_total_limit.as_deref()),
            (
                "load_best_model_at_end",
                self.load_best_model_at_end.as_deref(),
            ),
            (
                "metric_for_best_model",
                self.metric_for_best_model.as_deref(),
            ),
            ("greater_is_better", self.greater_is_better.as_deref()),
            ("eval_on_start", self.eval_on_start.as_deref()),
            ("batch_sampler", self.batch_sampler.as_deref()),
            (
                "multi_dataset_batch_sampler",
                self.multi_dataset_batch_sampler.as_deref(),
            ),
        ]
    }
}

/// The settings the command line gives, by the name they are written under, with the flag
/// that gave each. The rule: a flag (or `--set`) beats the recipe file, and one setting given
/// twice on the command line (two flags, a flag and `--set`, or `lr` and `learning_rate`) is
/// an error, since which one should win would be a guess.
#[derive(Default)]
struct GivenSettings(std::collections::BTreeMap<String, String>);

impl GivenSettings {
    fn claim(&mut self, key: &str, flag: String) -> anyhow::Result<()> {
        let canonical = canonical_key(key).to_string();
        if let Some(earlier) = self.0.get(&canonical) {
            anyhow::bail!(
                "{earlier} and {flag} both set `{canonical}`; give it once on the command line"
            );
        }
        self.0.insert(canonical, flag);
        Ok(())
    }
}

/// The recipe: the file's table with the flags merged over it.
fn build_config(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let (mut table, origin, base) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let base = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            (table, path.display().to_string(), base)
        }
        None => (
            toml::Table::new(),
            "command line".to_string(),
            PathBuf::from("."),
        ),
    };
    // Flags give paths relative to the working directory, not to the config file.
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let absolute = |path: &Path| -> String { cwd.join(path).display().to_string() };
    let mut given = GivenSettings::default();
    let mut put = |key: &str, value: toml::Value| -> anyhow::Result<()> {
        let flag = match key {
            "train.files" => "--train".to_string(),
            "eval.files" => "--eval".to_string(),
            "export_onnx" => "--no-export-onnx".to_string(),
            key => format!("--{}", key.replace('_', "-")),
        };
        given.claim(key, flag)?;
        Ok(set_value(&mut table, key, value)?)
    };
    if let Some(model) = &args.model {
        let path = Path::new(model);
        let value = if path.exists() {
            absolute(path)
        } else {
            model.clone()
        };
        put("model", value.into())?;
    }
    if args.from_scratch {
        put("from_scratch", true.into())?;
    }
    if let Some(base) = &args.base_model {
        let path = Path::new(base);
        let value = if path.exists() {
            absolute(path)
        } else {
            base.clone()
        };
        put("base_model", value.into())?;
    }
    if let Some(dtype) = &args.base_dtype {
        put("base_dtype", dtype.clone().into())?;
    }
    if let Some(output) = &args.output {
        put("output", absolute(output).into())?;
    }
    if let Some(device) = &args.device {
        put("device", device.clone().into())?;
    }
    if let Some(loss) = &args.loss {
        put("loss", loss.clone().into())?;
    }
    if let Some(text) = &args.loss_config {
        let json: serde_json::Value = serde_json::from_str(text)
            .with_context(|| format!("--loss-config is not valid JSON: {text}"))?;
        let value: toml::Value = serde_json::from_value(json)
            .with_context(|| "--loss-config must be a JSON object without nulls".to_string())?;
        put("loss_config", value)?;
    }
    if let Some(text) = &args.learning_rate_mapping {
        let json: serde_json::Value = serde_json::from_str(text)
            .with_context(|| format!("--learning-rate-mapping is not valid JSON: {text}"))?;
        let value: toml::Value = serde_json::from_value(json).with_context(|| {
            "--learning-rate-mapping must be a JSON object of pattern → rate".to_string()
        })?;
        put("learning_rate_mapping", value)?;
    }
    if !args.train_files.is_empty() {
        let files: Vec<toml::Value> = args
            .train_files
            .iter()
            .map(|f| absolute(f).into())
            .collect();
        put("train.files", toml::Value::Array(files))?;
    }
    if !args.eval_files.is_empty() {
        let files: Vec<toml::Value> = args.eval_files.iter().map(|f| absolute(f).into()).collect();
        put("eval.files", toml::Value::Array(files))?;
    }
    // Whole numbers stay integers (as a recipe writes them); others are fractions.
    for (key, value) in [
        ("num_train_epochs", args.epochs),
        ("logging_steps", args.logging_steps),
        ("eval_steps", args.eval_steps),
        ("save_steps", args.save_steps),
    ] {
        if let Some(value) = value {
            let value = if value.fract() == 0.0 && value >= 0.0 {
                toml::Value::Integer(value as i64)
            } else {
                toml::Value::Float(value)
            };
            put(key, value)?;
        }
    }
    let integers: [(&str, Option<usize>); 7] = [
        ("max_steps", args.max_steps),
        ("per_device_train_batch_size", args.batch_size),
        ("max_length", args.max_length),
        (
            "gradient_accumulation_steps",
            args.gradient_accumulation_steps,
        ),
        ("mini_batch_size", args.mini_batch_size),
        ("stop_at_step", args.stop_at_step),
        ("seed", args.seed.map(|s| s as usize)),
    ];
    for (key, value) in integers {
        if let Some(value) = value {
            put(key, toml::Value::Integer(value as i64))?;
        }
    }
    for (key, value) in [
        ("learning_rate", args.lr),
        ("warmup_ratio", args.warmup_ratio),
    ] {
        if let Some(value) = value {
            put(key, toml::Value::Float(value))?;
        }
    }
    if args.no_export_onnx {
        put("export_onnx", false.into())?;
    }
    for (key, value) in args.named.pairs() {
        if let Some(value) = value {
            given.claim(key, format!("--{}", key.replace('_', "-")))?;
            set_key(&mut table, key, value)?;
        }
    }
    for assignment in &args.set {
        let (key, value) = assignment
            .split_once('=')
            .with_context(|| format!("--set {assignment}: expected KEY=VALUE"))?;
        given.claim(key.trim(), format!("--set {assignment}"))?;
        set_key(&mut table, key.trim(), value.trim())?;
    }
    for required in ["model", "output", "train"] {
        if !table.contains_key(required) {
            anyhow::bail!(
                "{origin}: missing `{required}` (set it in --config or with --{})",
                required.replace('_', "-")
            );
        }
    }
    Ok(TrainConfig::from_table(table, &origin, &base)?)
}

pub fn run(args: TrainArgs, registry: &LossRegistry, out: &mut String) -> anyhow::Result<ExitCode> {
    if args.print_schema {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&TrainConfig::schema())?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.resume.is_some() && args.overwrite {
        anyhow::bail!(
            "--resume continues the run in the output directory and --overwrite replaces it; \
             give one of them"
        );
    }
    let config = build_config(&args)?;
    let world = crosstrain::distributed::World::from_launcher().map_err(anyhow::Error::msg)?;
    let options = RunOptions {
        overwrite: args.overwrite,
        resume: args.resume.clone(),
        progress: (std::io::stderr().is_terminal() && !args.json).then(progress_bar),
        other_inputs: args.config.iter().cloned().collect(),
        allowed_changes: args.allow_change.clone(),
        stop_signal: Some(super::signals::install()),
        previous_output_note: Some(super::signals::note_previous_output),
        world: world.clone(),
    };
    let report = match train(&config, registry, &options) {
        Ok(report) => report,
        // A check every rank made alike (another rank's inputs differ): each rank ends on
        // its own, rank 0 saying why.
        Err(error @ crosstrain::train::TrainError::RankMismatch { .. }) => {
            if world.is_main() {
                return Err(error.into());
            }
            return Ok(ExitCode::FAILURE);
        }
        // Any other error ends the whole job (the other ranks would wait for this one forever
        // at the next collective); the message says which rank.
        Err(error) if world.is_distributed() => {
            eprintln!(
                "error: rank {} of {}: {}",
                world.rank(),
                world.size(),
                super::error_message(&anyhow::Error::new(error))
            );
            world.abort(1)
        }
        Err(error) => return Err(error.into()),
    };
    if let Some(signal) = report.interrupted {
        let step = report.state.global_step;
        let message = match &report.last_checkpoint {
            Some(checkpoint) if step > 0 => format!(
                "stopped by {} after step {step} of {}; checkpoint {}\ncontinue with: {}",
                super::signals::name(signal),
                report.state.max_steps,
                checkpoint.display(),
                resume_command()
            ),
            _ => format!(
                "stopped by {} before the first step; nothing was trained or written",
                super::signals::name(signal)
            ),
        };
        if world.is_main() {
            eprintln!("{message}");
            if let Some(aside) = &report.previous_output_kept {
                eprintln!(
                    "the previous output (--overwrite) is kept at {}: this run had no \
                     scheduled checkpoint yet; remove it once you no longer need it",
                    aside.display()
                );
            }
        }
        return Ok(ExitCode::from((128 + signal).clamp(0, 255) as u8));
    }
    if !world.is_main() {
        // Rank 0 reports for the job.
        return Ok(ExitCode::SUCCESS);
    }
    let state = &report.state;
    let seconds = state.train_seconds;
    let pairs_per_second = state.pairs_seen as f64 / seconds.max(1e-9);
    let train_loss = state.total.means().map(|(loss, _)| loss);
    if args.json {
        let summary = serde_json::json!({
            "output": report.output.display().to_string(),
            "global_step": state.global_step,
            "stopped_early": report.stopped_early,
            "train_loss": train_loss,
            "startup_seconds": report.startup_seconds,
            "train_seconds": seconds,
            "pairs_per_second": pairs_per_second,
            "metrics": report.final_metrics,
            "seconds_in": {
                "tokenize": report.times.tokenize.as_secs_f64(),
                "forward": report.times.forward.as_secs_f64(),
                "loss": report.times.loss.as_secs_f64(),
                "backward": report.times.backward.as_secs_f64(),
                "optimizer": report.optimizer_seconds,
            },
            "onnx": state.onnx,
            "datasets": report.datasets,
        });
        writeln!(out, "{summary}")?;
        return Ok(ExitCode::SUCCESS);
    }
    if report.stopped_early {
        writeln!(
            out,
            "stopped at step {} of {} (stop_at_step); continue with --resume",
            state.global_step, state.max_steps
        )?;
    } else {
        writeln!(
            out,
            "trained {} steps in {seconds:.1} s ({pairs_per_second:.1} pairs/s); mean training loss {}",
            state.global_step,
            train_loss.map_or("-".into(), |l| format!("{l:.4}"))
        )?;
    }
    for (key, value) in &report.final_metrics {
        writeln!(out, "{key:<32} {value:.6}")?;
    }
    if let Some(onnx) = &state.onnx {
        match (onnx.max_abs_logit_diff, &onnx.not_checked) {
            (Some(diff), _) => writeln!(
                out,
                "ONNX export {}: max |logit difference| vs candle {diff:.2e} on {} pairs",
                onnx.file, onnx.pairs
            )?,
            (None, Some(why)) => writeln!(out, "ONNX export {} (not checked: {why})", onnx.file)?,
            _ => {}
        }
    }
    writeln!(out, "model: {}", report.output.display())?;
    Ok(ExitCode::SUCCESS)
}

/// This process's command line as one to paste: without `--overwrite`, with `--resume`.
fn resume_command() -> String {
    let quote = |arg: String| {
        if !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
        {
            arg
        } else {
            format!("'{}'", arg.replace('\'', "'\\''"))
        }
    };
    let mut args: Vec<String> = std::env::args()
        .filter(|arg| arg != "--overwrite")
        .map(quote)
        .collect();
    if !args.iter().any(|arg| arg == "--resume") {
        args.push("--resume".into());
    }
    args.join(" ")
}

/// The progress bar on stderr, drawn from the trainer's progress reports.
fn progress_bar() -> std::sync::Arc<dyn Fn(TrainProgress) + Send + Sync> {
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    std::sync::Arc::new(move |event| match event {
        TrainProgress::Started { step, max_steps } => {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(max_steps as u64);
            bar.set_position(step as u64);
        }
        TrainProgress::Step {
            step,
            loss,
            learning_rate,
            pairs_per_second,
        } => {
            bar.set_position(step as u64);
            bar.set_message(format!(
                "loss {loss:.4} lr {learning_rate:.2e} {pairs_per_second:.1} pairs/s"
            ));
        }
        TrainProgress::Stopped { step } => {
            bar.abandon_with_message(format!("stopped at step {step}"));
        }
        TrainProgress::Finished => bar.finish_and_clear(),
    })
}
