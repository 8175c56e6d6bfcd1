//! The loop: batches in seeded epoch order, one optimizer step per accumulated batch,
//! logging, evaluation and checkpoints at their steps.

#![allow(unused_imports)]
use super::*;

impl Run<'_> {
    /// The loop; returns how it ended. `stop_signal` is looked at after every optimizer step
    /// (a step is finished, never abandoned half-way, so a checkpoint is always of a whole
    /// step).
    pub(super) fn train_loop(
        &mut self,
        progress: Option<&(dyn Fn(TrainProgress) + Send + Sync)>,
        stop_signal: Option<&std::sync::atomic::AtomicI32>,
    ) -> Result<LoopEnd, TrainError> {
        let stop_requested = || {
            stop_signal
                .map(|s| s.load(std::sync::atomic::Ordering::SeqCst))
                .filter(|&signal| signal != 0)
        };
        let report = |event: TrainProgress| {
            if let Some(progress) = progress {
                progress(event);
            }
        };
        let config = self.config;
        report(TrainProgress::Started {
            step: self.state.global_step,
            max_steps: self.state.max_steps,
        });
        let mut grads = GradAccumulator::new(self.vars.len());
        let accumulation = config.gradient_accumulation_steps;
        let scale = 1.0 / accumulation as f64;
        let started = Instant::now();
        let seconds_before = self.state.train_seconds;
        let pairs_before = self.state.pairs_seen;
        let mut micro = 0usize;
        if config.eval_on_start && self.state.global_step == 0 && self.world.is_main() {
            // Early stopping's check here only resets its counter (no best yet).
            self.evaluate_and_log()?;
        }
        if let Some(signal) = world::agreed_signal(&self.world, stop_requested()) {
            // Before the first step of this run: nothing new to keep.
            report(TrainProgress::Stopped {
                step: self.state.global_step,
            });
            return Ok(LoopEnd::Interrupted(signal));
        }
        while self.state.global_step < self.state.max_steps {
            let batches =
                sources::epoch_plan(config, &self.sources, self.state.epoch, self.batch_size)?;
            if batches.is_empty() {
                break;
            }
            let epoch = self.state.epoch;
            while self.state.epoch == epoch
                && self.state.batch_in_epoch < batches.len()
                && self.state.global_step < self.state.max_steps
            {
                let batch_index = self.state.batch_in_epoch;
                let (source_index, global_rows) = &batches[batch_index];
                let source = &self.sources[*source_index];
                // This rank's share of the global batch, and its weight in the batch's loss
                // and gradient (the whole batch in a world of one).
                let rows = self.world.share(global_rows);
                let weight = rows.len() as f64 / global_rows.len().max(1) as f64;
                let step = self.state.global_step + 1;
                let plan_seed = derive_seed(
                    config.seed,
                    PLAN,
                    (self.state.epoch * self.state.batches_per_epoch + batch_index) as u64,
                );
                let outcome = if rows.is_empty() {
                    // A short last batch left this rank nothing: it adds no gradient.
                    Ok(step::BatchOutcome::default())
                } else {
                    accumulate_batch(
                        &self.model,
                        &self.vars,
                        &source.loss,
                        &source.dataset,
                        rows,
                        plan_seed,
                        config.mini_batch_size,
                        scale * weight,
                        config
                            .prompts
                            .as_ref()
                            .and_then(|prompts| prompts.for_dataset(&source.name)),
                        &mut grads,
                    )
                };
                let outcome = match outcome {
                    Ok(outcome) => outcome,
                    // With several ranks, a non-finite logit travels as the rank's loss, so
                    // that every rank stops at this step with the same error.
                    Err(StepError::NonFiniteLogit { value }) if self.world.is_distributed() => {
                        step::BatchOutcome {
                            loss: f64::from(value),
                            ..step::BatchOutcome::default()
                        }
                    }
                    Err(StepError::NonFiniteLogit { value }) => {
                        return Err(self.non_finite(step, batch_index, f64::from(value)))
                    }
                    Err(source) => return Err(TrainError::Step { step, source }),
                };
                self.times += outcome.times;
                let figures = world::sum_batch_figures(
                    &self.world,
                    world::BatchFigures {
                        loss: outcome.loss,
                        components: outcome.components,
                        pairs: outcome.pairs,
                    },
                    weight,
                );
                if !figures.loss.is_finite() {
                    return Err(self.non_finite(step, batch_index, figures.loss));
                }
                // Several named datasets: each one's loss is logged too.
                let dataset_name = config.train.named.then_some(source.name.as_str());
                self.state
                    .since_log
                    .add(figures.loss, &figures.components, dataset_name);
                self.state
                    .total
                    .add(figures.loss, &figures.components, dataset_name);
                self.state.pairs_seen += figures.pairs;
                self.state.batch_in_epoch += 1;
                micro += 1;
                let epoch_done = self.state.batch_in_epoch == batches.len();
                if micro < accumulation && !epoch_done {
                    continue;
                }
                micro = 0;

                let optimizer_started = Instant::now();
                let lr = match &self.state.plateau {
                    Some(plateau) => plateau.lr,
                    None => learning_rate(
                        config.lr_scheduler,
                        &config.lr_scheduler_kwargs,
                        config.lr,
                        self.state.global_step,
                        self.state.warmup_steps,
                        self.state.max_steps,
                    ),
                };
                let mut step_grads = grads.take();
                world::sum_gradients(
                    &self.world,
                    self.device_sum.as_ref(),
                    &self.vars,
                    &mut step_grads,
                )?;
                let grad_norm = clip_grad_norm(&mut step_grads, config.max_grad_norm)?;
                self.optimizer.step(&step_grads, lr)?;
                self.optimizer_seconds += optimizer_started.elapsed().as_secs_f64();
                self.state.global_step += 1;
                if epoch_done {
                    self.state.epoch += 1;
                    self.state.batch_in_epoch = 0;
                }
                self.state.train_seconds = seconds_before + started.elapsed().as_secs_f64();
                report(TrainProgress::Step {
                    step: self.state.global_step,
                    loss: figures.loss,
                    learning_rate: lr,
                    pairs_per_second: (self.state.pairs_seen - pairs_before) as f64
                        / started.elapsed().as_secs_f64().max(1e-9),
                });
                let global_step = self.state.global_step;
                let last = global_step == self.state.max_steps;
                if global_step % config.log_every(self.state.max_steps) == 0 || last {
                    if let Some((loss, components)) = self.state.since_log.means() {
                        let dataset_losses = self.state.since_log.dataset_means();
                        self.log(LogEntry {
                            step: global_step,
                            epoch: self.state.epoch_fraction(),
                            loss: Some(loss),
                            loss_components: components,
                            dataset_losses,
                            learning_rate: Some(lr),
                            grad_norm: Some(grad_norm),
                            metrics: BTreeMap::new(),
                        })?;
                        self.state.since_log = LossSums::default();
                    }
                }
                // The last step is evaluated and checkpointed when it falls on the schedule,
                // as transformers does, so that `load_best_model_at_end` weighs the final
                // model too (the end of the run then reuses that evaluation).
                let evaluated =
                    config.evaluates_after(global_step, epoch_done, self.state.max_steps);
                if evaluated && self.world.is_main() {
                    self.evaluate_and_log()?;
                    self.evaluated_step = Some(global_step);
                }
                let stop_early = evaluated && self.early_stop_check() && !last;
                if evaluated {
                    self.plateau_step();
                }
                let stop_here = config.stop_at_step == Some(global_step) && !last;
                let signal = world::agreed_signal(&self.world, stop_requested());
                // `save_strategy = "best"`: after an evaluation with a new best metric (rank 0
                // alone evaluates; every rank takes part in the checkpoint).
                let new_best = evaluated
                    && config.save_strategy == config::SaveStrategy::Best
                    && world::agreed_flag(&self.world, self.improved_best().is_some());
                let scheduled =
                    config.saves_after(global_step, epoch_done, self.state.max_steps) || new_best;
                if scheduled || stop_here || signal.is_some() {
                    self.save_checkpoint(evaluated, scheduled || stop_here)?;
                }
                if let Some(signal) = signal {
                    report(TrainProgress::Stopped { step: global_step });
                    return Ok(LoopEnd::Interrupted(signal));
                }
                if stop_here {
                    report(TrainProgress::Stopped { step: global_step });
                    return Ok(LoopEnd::StoppedAtStep);
                }
                if stop_early {
                    self.state.early_stopping.stopped_at = Some(global_step);
                    tracing::info!(
                        step = global_step,
                        metric = %self.state.best_metric_name,
                        "early stopping: {} evaluations without improvement",
                        self.state.early_stopping.patience_counter
                    );
                    report(TrainProgress::Finished);
                    return Ok(LoopEnd::Finished);
                }
            }
        }
        report(TrainProgress::Finished);
        Ok(LoopEnd::Finished)
    }

    /// Early stopping's check after an evaluation that followed a step; true when the
    /// patience is spent. Every rank calls it and agrees, since only rank 0 evaluates.
    pub(super) fn early_stop_check(&mut self) -> bool {
        let Some(patience) = self.config.early_stopping_patience else {
            return false;
        };
        let mut spent = false;
        if self.world.is_main() {
            let metric = &self.state.best_metric_name;
            if let Some(&value) = self.last_metrics.get(metric) {
                let greater = self
                    .config
                    .greater_is_better
                    .unwrap_or(!metric.ends_with("loss"));
                spent = self.state.early_stopping.observe(
                    value,
                    greater,
                    self.config.early_stopping_threshold,
                    patience,
                );
            }
        }
        world::agreed_flag(&self.world, spent)
    }

    /// `reduce_lr_on_plateau`'s step after an evaluation that followed a step (torch's
    /// `ReduceLROnPlateau.step(metric)`, as transformers calls it); rank 0's rate is every
    /// rank's.
    fn plateau_step(&mut self) {
        let metric = config::eval_metric_key(self.config.plateau_metric());
        let Some(plateau) = &mut self.state.plateau else {
            return;
        };
        if self.world.is_main() {
            if let Some(&value) = self.last_metrics.get(&metric) {
                if super::schedule::plateau_step(plateau, &self.config.lr_scheduler_kwargs, value) {
                    tracing::info!(lr = plateau.lr, "reduce_lr_on_plateau: {metric} stalled");
                }
            }
        }
        let mut rate = [if self.world.is_main() {
            plateau.lr
        } else {
            0.0
        }];
        if self.world.is_distributed() {
            self.world.max_f64(&mut rate);
        }
        plateau.lr = rate[0];
    }

    /// The error for a NaN or infinite value at `step`, naming the last good checkpoint.
    pub(super) fn non_finite(&self, step: usize, batch_index: usize, value: f64) -> TrainError {
        TrainError::NonFinite {
            step,
            epoch: self.state.epoch + 1,
            batch: batch_index + 1,
            value,
            kept: match &self.last_checkpoint {
                Some(path) => format!(
                    "The last good checkpoint is {}; lower the learning rate or check the \
                     data, then --resume.",
                    path.display()
                ),
                None => "No checkpoint was written before it.".into(),
            },
        }
    }

    pub(super) fn log(&mut self, entry: LogEntry) -> Result<(), TrainError> {
        let line = serde_json::to_string(&entry).map_err(|e| io_error(&self.metrics_log, e))?;
        self.state.log_history.push(entry);
        if !self.world.is_main() {
            return Ok(());
        }
        tracing::info!(target: "crosstrain::train", "{line}");
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.metrics_log)
            .map_err(|e| io_error(&self.metrics_log, e))?;
        writeln!(file, "{line}").map_err(|e| io_error(&self.metrics_log, e))?;
        if let (Some(board), Some(entry)) = (&mut self.tensorboard, self.state.log_history.last()) {
            let path = board.path().to_path_buf();
            board.write(entry).map_err(|e| io_error(&path, e))?;
        }
        Ok(())
    }
}
