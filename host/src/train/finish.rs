//! Checkpoints (atomic, resumable) and the end of a run: the final model directory with its
//! card, training summary, `training_args.json` and ONNX export.

#![allow(unused_imports)]
use super::*;

impl Run<'_> {
    /// The last evaluation's `metric_for_best_model` when it beats the best checkpoint's
    /// (or there is none yet).
    pub(super) fn improved_best(&self) -> Option<f64> {
        let metric = &self.state.best_metric_name;
        let greater = self
            .config
            .greater_is_better
            .unwrap_or(!metric.ends_with("loss"));
        let value = *self.last_metrics.get(metric)?;
        let better = match self.state.best_metric {
            None => true,
            Some(best) if greater => value > best,
            Some(best) => value < best,
        };
        better.then_some(value)
    }

    /// Writes `checkpoint-N`. `scheduled` says whether it is one the recipe asked for (or
    /// `stop_at_step`'s): only such a checkpoint lets `--overwrite`'s previous output go. One
    /// written because a signal stopped the run keeps the previous output where it was moved,
    /// and the stop message names that place.
    pub(super) fn save_checkpoint(
        &mut self,
        evaluated: bool,
        scheduled: bool,
    ) -> Result<(), TrainError> {
        let step = self.state.global_step;
        let name = format!("checkpoint-{step}");
        let target = self.config.output.join(&name);
        if target.exists() {
            return Err(TrainError::CheckpointExists { path: target });
        }
        if evaluated {
            if let Some(value) = self.improved_best() {
                self.state.best_metric = Some(value);
                self.state.best_checkpoint = Some(name.clone());
            }
        }
        self.state.dropout_state = self.model.dropout().snapshot();
        // Every rank takes part in this gather; then only rank 0 writes.
        self.state.rank_dropout_states =
            world::gather_dropout_states(&self.world, self.state.dropout_state);
        if !self.world.is_main() {
            self.last_checkpoint = Some(target);
            return Ok(());
        }
        let state_json =
            serde_json::to_string_pretty(&self.state).map_err(|e| io_error(&target, e))?;
        let optimizer_tensors: std::collections::HashMap<String, Tensor> =
            self.optimizer.state_tensors()?.into_iter().collect();
        write_dir_atomically(&target, io_error, |staging| {
            self.model.write_to(staging)?;
            let optimizer_file = staging.join("optimizer.safetensors");
            // The error names the file itself.
            crosstrain_model::weights::save_tensors(&optimizer_tensors, &optimizer_file)?;
            let state_file = staging.join("trainer_state.json");
            std::fs::write(&state_file, state_json + "\n").map_err(|e| io_error(&state_file, e))?;
            write_training_args(self.config, staging, self.world.size())
        })?;
        tracing::info!(step, "wrote {}", target.display());
        self.last_checkpoint = Some(target);
        if scheduled {
            self.discard_previous_output()?;
        }
        if let Some(limit) = self.config.save_total_limit {
            let mut existing = checkpoints(&self.config.output);
            let best = self.state.best_checkpoint.clone();
            while existing.len() > limit {
                let position = existing
                    .iter()
                    .position(|(_, path)| {
                        best.as_deref() != path.file_name().map(|n| n.to_string_lossy()).as_deref()
                    })
                    .unwrap_or(0);
                let (_, path) = existing.remove(position);
                std::fs::remove_dir_all(&path).map_err(|e| io_error(&path, e))?;
            }
        }
        Ok(())
    }

    /// The new run has something to keep: `--overwrite`'s previous output goes.
    fn discard_previous_output(&mut self) -> Result<(), TrainError> {
        if let Some(previous) = self.previous_output.take() {
            previous.discard()?;
            if let Some(note) = self.previous_output_note {
                note(None);
            }
        }
        Ok(())
    }

    /// Final evaluation, best-model reload, and the output directory.
    pub(super) fn finish(&mut self) -> Result<(), TrainError> {
        let config = self.config;
        if !self.world.is_main() {
            // Rank 0 evaluates and writes; the others are done.
            return Ok(());
        }
        // The last step's scheduled evaluation is the final one: not run (and logged) twice.
        if self.evaluates() && self.evaluated_step != Some(self.state.global_step) {
            self.evaluate_and_log()?;
        }
        if config.load_best_model_at_end {
            if let Some(best) = self.state.best_checkpoint.clone() {
                let path = config.output.join(&best);
                self.load_weights(&path)?;
                tracing::info!("loaded the best checkpoint {best}");
                if self.evaluates() {
                    self.last_metrics = self.evaluate()?.0;
                }
            }
        }
        let output = config.output.clone();
        let staging = output.join(format!(".final.partial-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| io_error(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| io_error(&staging, e))?;
        let written = self.write_final(&staging);
        if let Err(error) = written {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
        // Move each finished file into place (each rename is atomic); checkpoints and the
        // metrics log stay.
        for entry in std::fs::read_dir(&staging).map_err(|e| io_error(&staging, e))? {
            let entry = entry.map_err(|e| io_error(&staging, e))?;
            let target = output.join(entry.file_name());
            if target.is_dir() {
                std::fs::remove_dir_all(&target).map_err(|e| io_error(&target, e))?;
            }
            std::fs::rename(entry.path(), &target).map_err(|e| io_error(&target, e))?;
        }
        std::fs::remove_dir(&staging).map_err(|e| io_error(&staging, e))?;
        self.discard_previous_output()?;
        // A resumed run ends with no staging folder of an earlier, killed one.
        output::remove_stale_partials(&output)?;
        Ok(())
    }

    pub(super) fn write_final(&mut self, staging: &Path) -> Result<(), TrainError> {
        let config = self.config;
        self.model.write_to(staging)?;
        write_training_args(config, staging, self.world.size())?;
        if config.export_onnx {
            let onnx_dir = staging.join("onnx");
            std::fs::create_dir_all(&onnx_dir).map_err(|e| io_error(&onnx_dir, e))?;
            let onnx_file = onnx_dir.join("model.onnx");
            let bytes = crate::onnx::export_onnx(&self.model, config.onnx_opset)
                .map_err(|e| io_error(&onnx_file, e))?;
            std::fs::write(&onnx_file, bytes).map_err(|e| io_error(&onnx_file, e))?;
            let pairs = crate::onnx::parity_pairs().map_err(|e| io_error(&onnx_file, e))?;
            let (figure, not_checked) = match crate::onnx::library_path() {
                Err(missing) => (None, Some(missing.to_string())),
                Ok(_) => match crate::onnx::parity(&self.model, &onnx_file, &pairs) {
                    Ok(diff) => (Some(diff), None),
                    Err(error) => (None, Some(error.to_string())),
                },
            };
            match (figure, &not_checked) {
                (Some(diff), _) => tracing::info!(
                    "ONNX export: max |logit difference| vs candle {diff:.3e} on {} pairs",
                    pairs.len()
                ),
                (None, Some(why)) => tracing::warn!("ONNX export not checked: {why}"),
                _ => {}
            }
            self.state.onnx = Some(OnnxReport {
                file: "onnx/model.onnx".into(),
                opset: config.onnx_opset,
                max_abs_logit_diff: figure,
                pairs: pairs.len(),
                not_checked,
            });
        }
        let state_file = staging.join("trainer_state.json");
        let text =
            serde_json::to_string_pretty(&self.state).map_err(|e| io_error(&state_file, e))?;
        std::fs::write(&state_file, text + "\n").map_err(|e| io_error(&state_file, e))?;

        let summary = self.training_summary()?;
        let summary_file = staging.join("training_summary.json");
        let text =
            serde_json::to_string_pretty(&summary).map_err(|e| io_error(&summary_file, e))?;
        std::fs::write(&summary_file, text + "\n").map_err(|e| io_error(&summary_file, e))?;
        // What training_args.json holds, which `crosstrain card` reads back.
        let args =
            training_args(config, self.world.size()).map_err(|e| io_error(&summary_file, e))?;
        crate::card::write_files(
            staging,
            &args,
            &self.state,
            &summary,
            &config::default_values(),
        )
        .map_err(|e| TrainError::Io {
            path: e.path,
            message: e.message,
        })
    }

    /// What the model card needs beyond the recipe and the state.
    pub(super) fn training_summary(&self) -> Result<crate::card::TrainingSummary, TrainError> {
        use crate::card::{EvaluatorSummary, LossSummary, TrainingSummary};
        let config = self.config;
        let tokenizer = self.model.tokenizer();
        let loss_summary = |source: &sources::TrainSource| {
            let description = source.loss.description();
            LossSummary {
                name: description.name.clone(),
                qualified_name: source.loss.qualified_name().to_string(),
                library: source.library.name.clone(),
                library_version: source.library.version.clone(),
                summary: description.summary.clone(),
                config: source.loss.effective_config(),
                citation: description.citation.clone(),
                format: source.format_name.clone(),
            }
        };
        let named = config.train.named;
        let mut datasets: Vec<crate::card::DatasetSummary> = self
            .sources
            .iter()
            .map(|source| {
                let mut summary = summary::summarize_dataset("train", &source.dataset, tokenizer);
                if named {
                    summary.name = Some(source.name.clone());
                    summary.loss = Some(loss_summary(source));
                }
                summary
            })
            .collect();
        for source in &self.eval_sources {
            let mut summary = summary::summarize_dataset("eval", &source.dataset, tokenizer);
            if config.eval.as_ref().is_some_and(|e| e.named) {
                summary.name = Some(source.name.clone());
            }
            datasets.push(summary);
        }
        let mut evaluators = Vec::new();
        // (kind, name, settings, primary metric) per evaluator; NanoBEIR gives one reranking
        // entry per dataset and its aggregate, as the reference's card lists them.
        let mut described: Vec<(&str, String, Value, String)> = Vec::new();
        for (index, loaded) in self.evaluators.iter().enumerate() {
            let primary = self.primaries.get(index).cloned().unwrap_or_default();
            let (kind, name, settings) = match loaded {
                LoadedEvaluator::Reranking { evaluator, .. } => (
                    "reranking",
                    evaluator.name.clone(),
                    json!({
                        "at_k": evaluator.at_k,
                        "always_rerank_positives": evaluator.always_rerank_positives,
                    }),
                ),
                LoadedEvaluator::Pairs {
                    kind,
                    name,
                    dataset,
                    ..
                } => {
                    let split = if name.is_empty() { "evaluator" } else { name };
                    datasets.push(summary::summarize_dataset(split, dataset, tokenizer));
                    let kind = if *kind == EvaluatorKind::Classification {
                        "classification"
                    } else {
                        "correlation"
                    };
                    (kind, name.clone(), json!({}))
                }
                LoadedEvaluator::NanoBeir {
                    evaluator,
                    dataset_id,
                    datasets,
                } => {
                    for (split, _) in datasets {
                        let name = evaluator.dataset_name(split);
                        let primary = format!("{name}_ndcg@{}", evaluator.at_k);
                        let settings = json!({
                            "at_k": evaluator.at_k,
                            "always_rerank_positives": evaluator.always_rerank_positives,
                        });
                        described.push(("reranking", name, settings, primary));
                    }
                    (
                        "nanobeir",
                        evaluator.name(),
                        json!({
                            "dataset_names": evaluator.dataset_names,
                            "dataset_id": dataset_id,
                            "rerank_k": evaluator.rerank_k,
                            "at_k": evaluator.at_k,
                            "always_rerank_positives": evaluator.always_rerank_positives,
                        }),
                    )
                }
            };
            described.push((kind, name, settings, primary));
        }
        for (kind, name, settings, primary) in described {
            // Keys of this evaluator: `eval_<name>_<metric>` (or `eval_<metric>` unnamed).
            let prefix = if name.is_empty() {
                "eval_".to_string()
            } else {
                format!("eval_{name}_")
            };
            let metrics: BTreeMap<String, f64> = self
                .last_metrics
                .iter()
                .filter(|(key, _)| key.starts_with(&prefix) && key.as_str() != "eval_loss")
                .map(|(key, value)| (key["eval_".len()..].to_string(), *value))
                .collect();
            evaluators.push(EvaluatorSummary {
                kind: kind.to_string(),
                name,
                config: settings,
                metrics,
                primary_metric: primary,
            });
        }
        let example_data = self
            .eval_sources
            .first()
            .map_or(&self.sources[0].dataset, |s| &s.dataset);
        let pairs = summary::example_pairs(example_data, 5);
        let borrowed: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let logits = self.model.predict(&borrowed, config.eval_batch_size)?;
        let scores = self.model.default_activation().apply(logits);
        let example_scores = pairs
            .into_iter()
            .zip(scores)
            .map(|((a, b), score)| (a, b, score.first().copied().unwrap_or(f32::NAN)))
            .collect();
        Ok(TrainingSummary {
            base_model: config.model.clone(),
            from_scratch: config.from_scratch,
            base_model_is_local: Path::new(&config.model).exists(),
            architecture: self.model.config().architecture_name().to_string(),
            architecture_details: self.model.config().description(),
            parameters: self.vars.iter().map(|v| v.elem_count()).sum(),
            max_length: self.model.max_length(),
            num_labels: self.model.num_labels(),
            loss: loss_summary(&self.sources[0]),
            datasets,
            evaluators,
            versions: summary::framework_versions(&self.plugin_versions),
            example_scores,
            metadata: config.card.clone(),
            quantized_onnx: None,
            adapter: self.model.lora().map(|config| crate::card::AdapterSummary {
                config: config.clone(),
                trainable_parameters: self.model.trainable_count(),
                total_parameters: self.model.parameter_count(),
            }),
        })
    }

    pub(super) fn load_weights(&self, checkpoint: &Path) -> Result<(), TrainError> {
        // A LoRA run's checkpoints hold the adapter (and saved modules) under PEFT's names.
        let lora = self.model.lora().is_some();
        let file_name = if lora {
            crosstrain_model::lora::ADAPTER_WEIGHTS
        } else {
            "model.safetensors"
        };
        let file = checkpoint.join(file_name);
        let tensors: std::collections::HashMap<String, candle_core::Tensor> =
            candle_core::safetensors::load(&file, self.model.device())
                .map_err(|e| TrainError::Checkpoint {
                    path: checkpoint.to_path_buf(),
                    message: e.to_string(),
                })?
                .into_iter()
                .map(|(name, tensor)| match lora {
                    true => (crosstrain_model::lora::base_name(&name), tensor),
                    false => (name, tensor),
                })
                .collect();
        for trainable in self.model.trainable_parameters() {
            for part in &trainable.parts {
                let tensor = tensors
                    .get(&part.name)
                    .ok_or_else(|| TrainError::Checkpoint {
                        path: checkpoint.to_path_buf(),
                        message: format!("{file_name} has no {}", part.name),
                    })?;
                trainable.set(part, tensor)?;
            }
        }
        Ok(())
    }
}

/// `training_args.json`: the resolved config, as the run used it, with the crosstrain version
/// and `world_size`, the number of ranks (recorded as transformers' `TrainingArguments` has
/// it, so a resume can check it).
fn training_args(config: &TrainConfig, world_size: usize) -> serde_json::Result<Value> {
    let mut value = serde_json::to_value(config)?;
    if let Value::Object(map) = &mut value {
        map.insert(
            "crosstrain_version".into(),
            json!(env!("CARGO_PKG_VERSION")),
        );
        map.insert("world_size".into(), json!(world_size));
    }
    Ok(value)
}

/// Writes [`training_args`] into `dir`.
pub(super) fn write_training_args(
    config: &TrainConfig,
    dir: &Path,
    world_size: usize,
) -> Result<(), TrainError> {
    let path = dir.join("training_args.json");
    let value = training_args(config, world_size).map_err(|e| io_error(&path, e))?;
    let text = serde_json::to_string_pretty(&value).map_err(|e| io_error(&path, e))?;
    std::fs::write(&path, text + "\n").map_err(|e| io_error(&path, e))
}
