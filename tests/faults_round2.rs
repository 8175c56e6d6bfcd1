//! Faults and bad input, round 2 (issue 31), through the whole binary: each test names the
//! item of the issue it holds, and each failed on the main it was written against.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use support::{
    copy_model, crosstrain, fixture, run, stderr, stdout, train, train_args, write_pairs,
};

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn assert_fails_with(output: &Output, needles: &[&str]) {
    let message = stderr(output);
    assert!(!output.status.success(), "succeeded:\n{message}");
    for needle in needles {
        assert!(message.contains(needle), "{needle:?} not in:\n{message}");
    }
}

/// A temporary folder with a copy of the tiny BERT (`model`), 16 labelled pairs (`data`) and
/// the path of an output not yet made (`output`).
struct Setup {
    dir: tempfile::TempDir,
    model: PathBuf,
    data: PathBuf,
    output: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model = copy_model(dir.path());
        let data = dir.path().join("train.jsonl");
        write_pairs(&data);
        let output = dir.path().join("out");
        Self {
            dir,
            model,
            data,
            output,
        }
    }
}

/// The metrics lines of `metrics.jsonl` that carry evaluation metrics.
fn evaluations(output: &Path) -> Vec<Value> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|entry| entry.get("metrics").is_some())
        .collect()
}

/// Item 1: with `eval_steps = save_steps = 10` and `max_steps = 20`, the last step is
/// evaluated and checkpointed, so `load_best_model_at_end` weighs it; the final evaluation is
/// not run twice.
#[test]
fn load_best_model_at_end_weighs_the_last_step() {
    let Setup {
        dir,
        model,
        data,
        output,
    } = Setup::new();
    let result = train(
        &model,
        &data,
        &output,
        &[
            "--eval",
            data.to_str().unwrap(),
            "--max-steps",
            "20",
            "--eval-steps",
            "10",
            "--save-steps",
            "10",
            "--lr",
            "1e-3",
            "--load-best-model-at-end",
            "true",
        ],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(output.join("checkpoint-10").is_dir());
    assert!(
        output.join("checkpoint-20").is_dir(),
        "the last step, on the schedule, has its checkpoint"
    );
    let evaluated = evaluations(&output);
    let steps: Vec<u64> = evaluated
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [10, 20], "each scheduled step evaluated once");
    let loss_at = |step: u64| {
        evaluated.iter().find(|e| e["step"] == step).unwrap()["metrics"]["eval_loss"]
            .as_f64()
            .unwrap()
    };
    let best = if loss_at(20) < loss_at(10) {
        "checkpoint-20"
    } else {
        "checkpoint-10"
    };
    let state = read_json(&output.join("trainer_state.json"));
    assert_eq!(state["best_checkpoint"], best);
    assert_eq!(
        std::fs::read(output.join("model.safetensors")).unwrap(),
        std::fs::read(output.join(best).join("model.safetensors")).unwrap(),
        "the final model is the best checkpoint's"
    );

    // The same with the epoch strategies: 16 rows in batches of 4, two epochs.
    let epochs = dir.path().join("epochs");
    let result = train(
        &model,
        &data,
        &epochs,
        &[
            "--eval",
            data.to_str().unwrap(),
            "--epochs",
            "2",
            "--eval-strategy",
            "epoch",
            "--save-strategy",
            "epoch",
            "--lr",
            "1e-3",
            "--load-best-model-at-end",
            "true",
        ],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(epochs.join("checkpoint-4").is_dir());
    assert!(epochs.join("checkpoint-8").is_dir());
    let steps: Vec<u64> = evaluations(&epochs)
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [4, 8]);
}

/// Item 2: `mine-hard-negatives` and `convert` refuse to write over their own input, with
/// `--overwrite` too.
#[test]
fn mining_and_convert_never_overwrite_their_input() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    let text: String = (0..6)
        .map(|i| format!("{{\"query\": \"query {i}\", \"answer\": \"answer {i} words\"}}\n"))
        .collect();
    std::fs::write(&pairs, &text).unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "one document\nanother document\n").unwrap();
    // Another spelling of the same file.
    let spelled = dir.path().join("x/../pairs.jsonl");
    let mine = |output: &Path| {
        run(&[
            "mine-hard-negatives",
            "--data",
            pairs.to_str().unwrap(),
            "--corpus",
            corpus.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--overwrite",
        ])
    };
    std::fs::create_dir(dir.path().join("x")).unwrap();
    assert_fails_with(&mine(&spelled), &["is the --data file"]);
    assert_fails_with(&mine(&corpus), &["is the --corpus file"]);
    assert_eq!(std::fs::read_to_string(&pairs).unwrap(), text);
    assert_eq!(
        std::fs::read_to_string(&corpus).unwrap(),
        "one document\nanother document\n"
    );

    let classes = dir.path().join("classes.jsonl");
    let labelled: String = (0..6)
        .map(|i| format!("{{\"text\": \"text {i}\", \"label\": {}}}\n", i % 2))
        .collect();
    std::fs::write(&classes, &labelled).unwrap();
    let converted = run(&[
        "convert",
        "--data",
        classes.to_str().unwrap(),
        "--output",
        classes.to_str().unwrap(),
        "--overwrite",
    ]);
    assert_fails_with(&converted, &["is the --data file"]);
    assert_eq!(std::fs::read_to_string(&classes).unwrap(), labelled);
}

/// Items 3 and 9: `--resume` on data whose labels changed under the same path is refused
/// naming the file (allowed with `--allow-change train`); a recipe named by another
/// spelling of its path resumes; a changed setting of a named dataset is named by its field.
#[test]
fn resume_refuses_changed_data_and_names_changed_fields() {
    let Setup {
        dir,
        model,
        data,
        output,
    } = Setup::new();
    let stopped = train(
        &model,
        &data,
        &output,
        &["--max-steps", "4", "--stop-at-step", "2"],
    );
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    // The labels flipped, the path and row count the same.
    let flipped = std::fs::read_to_string(&data)
        .unwrap()
        .replace("\"label\": 1", "\"label\": 9")
        .replace("\"label\": 0", "\"label\": 1")
        .replace("\"label\": 9", "\"label\": 0");
    std::fs::write(&data, flipped).unwrap();
    let refused = train(&model, &data, &output, &["--max-steps", "4", "--resume"]);
    assert_fails_with(
        &refused,
        &["train.jsonl", "differs in its rows, labels or texts"],
    );
    let allowed = train(
        &model,
        &data,
        &output,
        &["--max-steps", "4", "--resume", "--allow-change", "train"],
    );
    assert!(allowed.status.success(), "{}", stderr(&allowed));

    // A recipe of named datasets, resumed through another spelling of its path.
    let recipes = dir.path().join("d");
    std::fs::create_dir(&recipes).unwrap();
    write_pairs(&recipes.join("qa.jsonl"));
    let recipe = recipes.join("multi.toml");
    let write_recipe = |limit: usize| {
        std::fs::write(
            &recipe,
            format!(
                "model = {model:?}\noutput = \"out\"\nloss = \"BinaryCrossEntropyLoss\"\n\
                 batch_size = 4\nmax_steps = 4\nsave_steps = 0\nexport_onnx = false\n\
                 [train.qa]\nfiles = \"qa.jsonl\"\nlimit = {limit}\n"
            ),
        )
        .unwrap();
    };
    write_recipe(12);
    let relative = crosstrain()
        .current_dir(dir.path())
        .args(["train", "--config", "d/multi.toml", "--stop-at-step", "1"])
        .output()
        .unwrap();
    assert!(relative.status.success(), "{}", stderr(&relative));
    let absolute = recipe.to_str().unwrap();
    let resumed = crosstrain()
        .current_dir(dir.path())
        .args([
            "train",
            "--config",
            absolute,
            "--stop-at-step",
            "2",
            "--resume",
        ])
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    write_recipe(8);
    let changed = crosstrain()
        .current_dir(dir.path())
        .args(["train", "--config", absolute, "--resume"])
        .output()
        .unwrap();
    assert_fails_with(&changed, &["train.qa.limit = 12 (this run: 8)"]);
    assert!(
        !stderr(&changed).contains("qa.jsonl"),
        "only the field that differs is shown: {}",
        stderr(&changed)
    );
}

/// Item 4: a `metric_for_best_model` that no evaluation logs is an error before training,
/// naming the metrics that will exist.
#[test]
fn a_best_metric_that_is_never_logged_is_refused_before_training() {
    let Setup {
        dir: _dir,
        model,
        data,
        output,
    } = Setup::new();
    let result = train(
        &model,
        &data,
        &output,
        &[
            "--eval",
            data.to_str().unwrap(),
            "--eval-steps",
            "2",
            "--max-steps",
            "4",
            "--metric-for-best-model",
            "eval_ndcg@10",
        ],
    );
    assert_fails_with(
        &result,
        &[
            "metric_for_best_model",
            "eval_ndcg@10 is never logged",
            "eval_loss",
        ],
    );
    assert!(!output.exists(), "nothing was trained or written");
    let fine = train(
        &model,
        &data,
        &output,
        &[
            "--eval",
            data.to_str().unwrap(),
            "--eval-steps",
            "2",
            "--max-steps",
            "4",
            "--metric-for-best-model",
            "loss",
        ],
    );
    assert!(fine.status.success(), "{}", stderr(&fine));
}

/// Item 5: one setting given twice on the command line, by two spellings or a flag and
/// `--set`, is an error; a flag beats the recipe file.
#[test]
fn a_setting_given_twice_on_the_command_line_is_an_error() {
    let Setup {
        dir,
        model,
        data,
        output,
    } = Setup::new();
    for (twice, key) in [
        (
            &[
                "--lr-scheduler-type",
                "linear",
                "--set",
                "lr_scheduler=cosine",
            ][..],
            "lr_scheduler_type",
        ),
        (
            &["--set", "lr=1e-4", "--learning-rate", "3e-4"][..],
            "learning_rate",
        ),
        (
            &["--set", "lr=1e-4", "--set", "learning_rate=3e-4"][..],
            "learning_rate",
        ),
    ] {
        let result = train(&model, &data, &output, twice);
        assert_fails_with(&result, &[&format!("both set `{key}`")]);
        assert!(!output.exists());
    }
    // The file says one thing, the flag another: the flag wins.
    let recipe = dir.path().join("recipe.toml");
    std::fs::write(&recipe, "learning_rate = 1e-4\nmax_steps = 1\n").unwrap();
    let result = train(
        &model,
        &data,
        &output,
        &["--config", recipe.to_str().unwrap(), "--lr", "3e-4"],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    let args = read_json(&output.join("training_args.json"));
    assert_eq!(args["learning_rate"], 3e-4);
}

/// Items 6 and 12: an opset ONNX Runtime cannot load is refused; an export that fails its
/// check (or whose check pairs cannot be read) never replaces a working one.
#[test]
fn export_onnx_never_replaces_a_working_file_with_a_failed_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model(dir.path());
    let model_arg = model.to_str().unwrap();
    let onnx = model.join("onnx/model.onnx");
    let good = run(&["export-onnx", "--model", model_arg]);
    assert!(good.status.success(), "{}", stderr(&good));
    let written = std::fs::read(&onnx).unwrap();

    let too_new = run(&["export-onnx", "--model", model_arg, "--opset", "29"]);
    assert_fails_with(&too_new, &["opset 29 is not supported", "17 to 28"]);
    let too_old = run(&["export-onnx", "--model", model_arg, "--opset", "16"]);
    assert_fails_with(&too_old, &["opset 16 is not supported"]);

    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let other = dir.path().join("other.onnx");
    let no_pairs = run(&[
        "export-onnx",
        "--model",
        model_arg,
        "--check",
        "--pairs",
        empty.to_str().unwrap(),
        "--output",
        other.to_str().unwrap(),
    ]);
    assert_fails_with(&no_pairs, &["empty.jsonl"]);
    assert!(
        !other.exists(),
        "nothing written before the pairs were read"
    );

    // A check that cannot pass (a negative tolerance): the earlier file stays.
    let failed = run(&[
        "export-onnx",
        "--model",
        model_arg,
        "--opset",
        "18",
        "--check",
        "--tolerance=-1",
    ]);
    assert!(!failed.status.success());
    assert!(stdout(&failed).contains("FAILED"), "{}", stdout(&failed));
    assert!(
        stdout(&failed).contains("was not written"),
        "{}",
        stdout(&failed)
    );
    assert_eq!(std::fs::read(&onnx).unwrap(), written);
    let leftovers: Vec<_> = std::fs::read_dir(model.join("onnx"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // Opset 28 is the newest, and loads.
    let newest = run(&[
        "export-onnx",
        "--model",
        model_arg,
        "--opset",
        "28",
        "--check",
    ]);
    assert!(newest.status.success(), "{}", stderr(&newest));
}

/// Item 7: Ctrl-C on an `--overwrite` run before its first scheduled checkpoint keeps the
/// previous output and says where it is; a second Ctrl-C says it too.
#[cfg(unix)]
#[test]
fn an_interrupted_overwrite_keeps_the_previous_output_and_says_where() {
    let Setup {
        dir,
        model,
        data,
        output,
    } = Setup::new();
    let first = train(&model, &data, &output, &["--max-steps", "2"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let previous_weights = std::fs::read(output.join("model.safetensors")).unwrap();
    let aside = dir.path().join("out.previous");

    for signals in [1, 2] {
        let child = crosstrain()
            .args(train_args(
                &model,
                &data,
                &output,
                &["--max-steps", "400", "--logging-steps", "1", "--overwrite"],
            ))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The previous output is moved aside, then the new run logs its first step (the
        // old metrics.jsonl must not count).
        let log = output.join("metrics.jsonl");
        let started = std::time::Instant::now();
        while !(aside.exists() && std::fs::read_to_string(&log).is_ok_and(|t| !t.is_empty())) {
            assert!(started.elapsed().as_secs() < 120, "no step was logged");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for _ in 0..signals {
            // SAFETY: kill(2) with the id of a child this test spawned and has not waited for.
            let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            assert_eq!(sent, 0);
        }
        let stopped = child.wait_with_output().unwrap();
        let message = stderr(&stopped);
        assert_eq!(stopped.status.code(), Some(130), "{message}");
        assert!(
            message.contains(&format!("kept at {}", aside.display())),
            "{message}"
        );
        assert_eq!(
            std::fs::read(aside.join("model.safetensors")).unwrap(),
            previous_weights,
            "the previous output is whole where the message says"
        );
        // Put it back for the next round, as the user would.
        std::fs::remove_dir_all(&output).unwrap();
        std::fs::rename(&aside, &output).unwrap();
    }
}

/// Item 8 (through the recipe) and item 10: settings that cannot mean what they say are
/// refused with the setting named.
#[test]
fn meaningless_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model(dir.path());
    let model_arg = model.to_str().unwrap();
    let data = dir.path().join("train.jsonl");
    write_pairs(&data);
    let data_arg = data.to_str().unwrap();
    let output = dir.path().join("out");

    let zero_limit = train(&model, &data, &output, &["--set", "train.limit=0"]);
    assert_fails_with(&zero_limit, &["train.jsonl", "limit = 0"]);
    let strategy = train(&model, &data, &output, &["--eval-strategy", "steps"]);
    assert_fails_with(&strategy, &["eval_strategy", "nothing to evaluate"]);
    let both = train(&model, &data, &output, &["--resume", "--overwrite"]);
    assert_fails_with(&both, &["--resume", "--overwrite", "give one of them"]);
    let dev = dir.path().join("dev.jsonl");
    std::fs::write(
        &dev,
        "{\"query\": \"q\", \"positive\": [\"a\"], \"negative\": [\"b\", \"c\"]}\n",
    )
    .unwrap();
    for (evaluators, needle) in [
        (
            format!("[[evaluators]]\nkind = \"reranking\"\nat_k = 0\ndata = {{ files = {dev:?} }}\n"),
            "at_k = 0",
        ),
        (
            format!(
                "[[evaluators]]\nkind = \"reranking\"\nname = \"dev\"\ndata = {{ files = {dev:?} }}\n\
                 [[evaluators]]\nkind = \"reranking\"\nname = \"dev\"\ndata = {{ files = {dev:?} }}\n"
            ),
            "two evaluators are named \"dev\"",
        ),
    ] {
        let recipe = dir.path().join("recipe.toml");
        std::fs::write(&recipe, evaluators).unwrap();
        let result = train(
            &model,
            &data,
            &output,
            &["--config", recipe.to_str().unwrap()],
        );
        assert_fails_with(&result, &[needle]);
    }
    assert!(!output.exists());

    let documents = dir.path().join("documents.txt");
    std::fs::write(&documents, "one\ntwo\n").unwrap();
    let top_zero = run(&[
        "rank",
        "--model",
        model_arg,
        "--query",
        "q",
        "--documents",
        documents.to_str().unwrap(),
        "--top-k",
        "0",
    ]);
    assert_fails_with(&top_zero, &["--top-k", "at least 1"]);
    let batch_zero = run(&[
        "predict",
        "--model",
        model_arg,
        "--pairs",
        data_arg,
        "--batch-size",
        "0",
    ]);
    assert_fails_with(&batch_zero, &["--batch-size", "at least 1"]);
    let onnx_without_backend = run(&[
        "predict",
        "--model",
        model_arg,
        "--pairs",
        data_arg,
        "--onnx-file",
        "onnx/model.onnx",
    ]);
    assert_fails_with(&onnx_without_backend, &["--onnx-file", "--backend onnx"]);
    let mined = dir.path().join("mined.jsonl");
    let bm25 = run(&[
        "mine-hard-negatives",
        "--data",
        data_arg,
        "--output",
        mined.to_str().unwrap(),
        "--bm25-k1=-1",
    ]);
    assert_fails_with(&bm25, &["--bm25-k1 -1"]);
    assert!(!mined.exists());
    let no_cases = dir.path().join("cases.json");
    std::fs::write(&no_cases, "{\"cases\": []}").unwrap();
    let check = run(&["losses", "check", no_cases.to_str().unwrap()]);
    assert_fails_with(&check, &["cases.json", "no loss cases"]);
}

/// Item 10: an ONNX file exported from a model with another number of labels is refused.
#[test]
fn an_onnx_file_of_another_label_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model(dir.path());
    let three = fixture("models/tiny-bert-ce-3labels");
    let foreign = model.join("onnx/three.onnx");
    let exported = run(&[
        "export-onnx",
        "--model",
        three.to_str().unwrap(),
        "--output",
        foreign.to_str().unwrap(),
    ]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let data = dir.path().join("pairs.jsonl");
    write_pairs(&data);
    let result = run(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        data.to_str().unwrap(),
        "--backend",
        "onnx",
        "--onnx-file",
        "onnx/three.onnx",
    ]);
    assert_fails_with(&result, &["three.onnx", "3 label(s) and the model has 1"]);
}

/// Item 11: damaged model directories and poor messages.
#[test]
fn model_directory_faults_are_named_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.jsonl");
    write_pairs(&data);
    let predict = |model: &Path| {
        run(&[
            "predict",
            "--model",
            model.to_str().unwrap(),
            "--pairs",
            data.to_str().unwrap(),
        ])
    };
    // config.json with fewer layers than the weights.
    let fewer = copy_model(&dir.path().join("fewer"));
    let config_file = fewer.join("config.json");
    let mut config = read_json(&config_file);
    let layers = config["num_hidden_layers"].as_u64().unwrap();
    assert!(layers >= 2);
    config["num_hidden_layers"] = (layers - 1).into();
    std::fs::write(&config_file, config.to_string()).unwrap();
    assert_fails_with(
        &predict(&fewer),
        &["model.safetensors", "num_hidden_layers", "fewer layers"],
    );
    // A directory where a file should be.
    for file in ["model.safetensors", "config.json"] {
        let model = copy_model(&dir.path().join(file.replace('.', "-")));
        std::fs::remove_file(model.join(file)).unwrap();
        std::fs::create_dir(model.join(file)).unwrap();
        assert_fails_with(&predict(&model), &[&format!("{file} is a directory")]);
    }
    let model = copy_model(&dir.path().join("onnx-dir"));
    std::fs::create_dir_all(model.join("onnx/model.onnx")).unwrap();
    let result = run(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        data.to_str().unwrap(),
        "--backend",
        "onnx",
    ]);
    assert_fails_with(&result, &["model.onnx is a directory"]);

    // ONNX Runtime's own error: printed once, by crosstrain, without colour codes. (Another
    // model's graph, whose vocabulary is smaller than this tokenizer's ids.)
    let small = fixture("models/tiny-modernbert-ce");
    let graph = model.join("onnx/small-vocabulary.onnx");
    let exported = run(&[
        "export-onnx",
        "--model",
        small.to_str().unwrap(),
        "--output",
        graph.to_str().unwrap(),
    ]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let long_words = dir.path().join("words.jsonl");
    std::fs::write(
        &long_words,
        "{\"query\": \"the internationalization of zebras\", \"document\": \"quantum\"}\n",
    )
    .unwrap();
    let result = run(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        long_words.to_str().unwrap(),
        "--backend",
        "onnx",
        "--onnx-file",
        "onnx/small-vocabulary.onnx",
    ]);
    let message = stderr(&result);
    assert!(!result.status.success());
    assert_eq!(
        message.matches("out of data bounds").count(),
        1,
        "{message}"
    );
    assert!(!message.contains('\u{1b}'), "colour codes: {message:?}");
}

/// Item 11: messages that named the wrong thing.
#[test]
fn training_messages_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model(dir.path());
    let data = dir.path().join("train.jsonl");
    write_pairs(&data);
    // An evaluation set that does not fit the loss is called the evaluation data.
    let eval = dir.path().join("eval.jsonl");
    std::fs::write(&eval, "{\"query\": \"q\", \"document\": \"d\"}\n").unwrap();
    let result = train(
        &model,
        &data,
        &dir.path().join("out"),
        &["--eval", eval.to_str().unwrap()],
    );
    assert_fails_with(&result, &["the evaluation data does not fit"]);
    assert!(!stderr(&result).contains("the training data"));
    // --output naming a file.
    let file = dir.path().join("model.bin");
    std::fs::write(&file, "x").unwrap();
    let result = train(&model, &data, &file, &[]);
    assert_fails_with(&result, &["model.bin", "is a file"]);
    assert!(!stderr(&result).contains("os error 17"));
    // A dataset cache that cannot be written is named as the cache, with the ways around it.
    let blocked: PathBuf = dir.path().join("not-a-folder");
    std::fs::write(&blocked, "x").unwrap();
    let result = support::crosstrain()
        .env("CROSSTRAIN_CACHE", &blocked)
        .args([
            "train",
            "--model",
            model.to_str().unwrap(),
            "--loss",
            "BinaryCrossEntropyLoss",
            "--train",
            data.to_str().unwrap(),
            "--output",
            dir.path().join("out").to_str().unwrap(),
            "--set",
            "train.storage=\"disk\"",
            "--no-export-onnx",
        ])
        .output()
        .unwrap();
    assert_fails_with(
        &result,
        &["dataset cache", "CROSSTRAIN_CACHE", "storage = \"memory\""],
    );
}
