//! Faults and bad input, through the whole binary: `--overwrite` keeps the previous output
//! until the new run has something to keep and never deletes an input, Ctrl-C leaves a
//! checkpoint and says how to resume, `eval`/`predict`/`rank` read what `train` reads,
//! `--resume` refuses a changed recipe, and every error is printed once, plainly, naming
//! its file.

mod support;

use std::path::{Path, PathBuf};

use support::{
    copy_model, crosstrain, fixture, plugin_library, run, stderr, stdout, train, write_pairs,
};

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

#[test]
fn overwrite_validates_first_keeps_the_old_output_until_a_checkpoint_and_spares_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model(dir.path());
    let data = dir.path().join("data/train.jsonl");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    write_pairs(&data);
    let output = dir.path().join("out");
    let first = train(&model, &data, &output, &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let trained = weights(&output);

    // Bad data, a bad flag value and an unknown loss fail before anything is touched.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"query\": 1, \"document\": \"d\", \"label\": 1}\n").unwrap();
    let result = train(&model, &bad, &output, &["--overwrite"]);
    assert!(!result.status.success());
    assert!(
        stderr(&result).contains("bad.jsonl:line 1"),
        "{}",
        stderr(&result)
    );
    assert_eq!(weights(&output), trained);
    let result = train(
        &model,
        &data,
        &output,
        &["--overwrite", "--max-length", "0"],
    );
    assert!(!result.status.success());
    assert_eq!(weights(&output), trained);
    let result = train(
        &model,
        &data,
        &output,
        &["--overwrite", "--loss", "NoSuchLoss"],
    );
    assert!(!result.status.success());
    assert_eq!(weights(&output), trained);

    // A run that fails mid-training before its first checkpoint puts the old output back.
    let result = train(
        &model,
        &data,
        &output,
        &["--overwrite", "--lr", "1e30", "--set", "max_grad_norm=0.0"],
    );
    assert!(!result.status.success());
    assert!(
        stderr(&result).contains("the loss is"),
        "{}",
        stderr(&result)
    );
    assert!(
        stderr(&result).contains("back in place"),
        "{}",
        stderr(&result)
    );
    assert_eq!(weights(&output), trained);
    assert!(!dir.path().join("out.previous").exists());

    // An output that is, or holds, an input is refused, with or without --overwrite.
    for (output, what) in [
        (model.clone(), "is the model"),
        (dir.path().to_path_buf(), "holds the model"),
        (dir.path().join("data"), "holds the training data"),
    ] {
        let result = train(&model, &data, &output, &["--overwrite"]);
        assert!(!result.status.success());
        assert!(stderr(&result).contains(what), "{}", stderr(&result));
    }
    assert!(model.join("model.safetensors").is_file());
    assert!(data.is_file());

    // A run that succeeds replaces the output and leaves nothing beside it.
    let result = train(&model, &data, &output, &["--overwrite", "--seed", "7"]);
    assert!(result.status.success(), "{}", stderr(&result));
    assert_ne!(weights(&output), trained);
    assert!(!dir.path().join("out.previous").exists());
}

#[cfg(unix)]
#[test]
fn an_interrupt_writes_a_checkpoint_says_how_to_resume_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("models/tiny-bert-ce");
    let data = dir.path().join("train.jsonl");
    write_pairs(&data);
    let output = dir.path().join("out");
    let args = |more: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "train",
            "--model",
            model.to_str().unwrap(),
            "--loss",
            "BinaryCrossEntropyLoss",
            "--train",
            data.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--batch-size",
            "4",
            "--max-steps",
            "80",
            "--logging-steps",
            "1",
            "--save-steps",
            "0",
            "--no-export-onnx",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(more.iter().map(|s| s.to_string()));
        args
    };
    let child = crosstrain()
        .args(args(&[]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the first step is logged.
    let log = output.join("metrics.jsonl");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|text| !text.is_empty()) {
        assert!(started.elapsed().as_secs() < 120, "no step was logged");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: kill(2) with the id of a child this test spawned and has not yet waited for.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0);
    let interrupted = child.wait_with_output().unwrap();
    let message = stderr(&interrupted);
    assert_eq!(interrupted.status.code(), Some(130), "{message}");
    assert!(
        message.contains("stopped by SIGINT after step"),
        "{message}"
    );
    assert!(message.contains("--resume"), "{message}");
    let (step, checkpoint) = std::fs::read_dir(&output)
        .unwrap()
        .flatten()
        .find_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let step: usize = name.strip_prefix("checkpoint-")?.parse().ok()?;
            Some((step, entry.path()))
        })
        .expect("a checkpoint was written");
    assert!(step < 80, "stopped at {step}");
    assert!(checkpoint.join("optimizer.safetensors").is_file());
    assert!(!output.join("model.safetensors").exists());

    // A staging folder that a killed run left behind goes when the run is resumed.
    let stale = output.join(".checkpoint-99.partial-4294967295");
    std::fs::create_dir(&stale).unwrap();
    let resumed = crosstrain().args(args(&["--resume"])).output().unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(!stale.exists());
    assert!(output.join("model.safetensors").is_file());
    let steps = std::fs::read_to_string(&log).unwrap().lines().count();
    assert_eq!(steps, 80);
}

#[test]
fn eval_predict_and_rank_read_the_columns_train_reads() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("models/tiny-bert-ce");
    let model = model.to_str().unwrap();
    // STS-B as users have it.
    let sts = dir.path().join("sts.csv");
    std::fs::write(
        &sts,
        "sentence1,sentence2,score\nA man plays a guitar.,A man is playing a guitar.,5.0\n\
         A woman slices onions.,A dog runs.,0.4\nKids play.,Children are playing.,4.2\n",
    )
    .unwrap();
    let output = run(&[
        "eval",
        "--model",
        model,
        "--evaluator",
        "correlation",
        "--data",
        sts.to_str().unwrap(),
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let metrics: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert!(metrics["spearman"].as_f64().is_some(), "{metrics}");

    let output = run(&[
        "predict",
        "--model",
        model,
        "--pairs",
        sts.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().count(), 3);

    let documents = dir.path().join("passages.jsonl");
    std::fs::write(
        &documents,
        "{\"passage\": \"one\"}\n{\"passage\": \"two\"}\n",
    )
    .unwrap();
    let output = run(&[
        "rank",
        "--model",
        model,
        "--query",
        "q",
        "--documents",
        documents.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().count(), 2);

    // Empty input is an error that says so, not a silent success.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.to_str().unwrap();
    for (args, says) in [
        (
            vec!["predict", "--model", model, "--pairs", empty],
            "no rows",
        ),
        (
            vec![
                "rank",
                "--model",
                model,
                "--query",
                "q",
                "--documents",
                empty,
            ],
            "no rows",
        ),
        (
            vec![
                "eval",
                "--model",
                model,
                "--evaluator",
                "reranking",
                "--data",
                empty,
            ],
            "no samples",
        ),
        (
            vec![
                "eval",
                "--model",
                model,
                "--evaluator",
                "correlation",
                "--data",
                empty,
            ],
            "no rows",
        ),
    ] {
        let output = run(&args);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr(&output).contains(says),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn resume_refuses_a_changed_recipe_unless_allowed_and_names_a_corrupt_optimizer_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("models/tiny-bert-ce");
    let data = dir.path().join("train.jsonl");
    write_pairs(&data);
    let output = dir.path().join("out");
    let first = train(&model, &data, &output, &["--stop-at-step", "2"]);
    assert!(first.status.success(), "{}", stderr(&first));

    let changed = train(&model, &data, &output, &["--resume", "--lr", "1e-3"]);
    assert!(!changed.status.success());
    let message = stderr(&changed);
    assert!(
        message.contains("learning_rate = 0.00005 (this run: 0.001)"),
        "{message}"
    );
    assert!(message.contains("--allow-change"), "{message}");
    // (Without the helper's --loss, which would be a second spelling of `loss`.)
    let mut args = support::train_args(
        &model,
        &data,
        &output,
        &[
            "--resume",
            "--set",
            "loss=\"MSELoss\"",
            "--allow-change",
            "lr",
        ],
    );
    let loss_flag = args.iter().position(|arg| arg == "--loss").unwrap();
    args.drain(loss_flag..loss_flag + 2);
    let changed = crosstrain().args(args).output().unwrap();
    assert!(!changed.status.success());
    assert!(
        stderr(&changed).contains("loss = \"BinaryCrossEntropyLoss\" (this run: \"MSELoss\")"),
        "{}",
        stderr(&changed)
    );

    // A truncated optimizer state is named as the file it is.
    let optimizer = output.join("checkpoint-2/optimizer.safetensors");
    let bytes = std::fs::read(&optimizer).unwrap();
    std::fs::write(&optimizer, &bytes[..bytes.len() / 2]).unwrap();
    let corrupt = train(&model, &data, &output, &["--resume"]);
    assert!(!corrupt.status.success());
    assert!(
        stderr(&corrupt).contains("checkpoint-2/optimizer.safetensors: unreadable"),
        "{}",
        stderr(&corrupt)
    );
    std::fs::write(&optimizer, &bytes).unwrap();

    let allowed = train(
        &model,
        &data,
        &output,
        &["--resume", "--lr", "1e-3", "--allow-change", "lr"],
    );
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    assert!(
        stderr(&allowed).contains("as --allow-change learning_rate allows"),
        "{}",
        stderr(&allowed)
    );
}

#[test]
fn skipped_rows_are_counted_as_dropped_and_the_first_are_shown() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.csv");
    // Line 3 opens a quote that is never closed: the CSV reader takes lines 3-6 as one record.
    std::fs::write(
        &data,
        "query,document,label\nq1,d1,1\nq2,\"d2 unclosed,0\nq3,d3,1\nq4,d4,0\nq5,d5,1\n",
    )
    .unwrap();
    let output = train(
        &fixture("models/tiny-bert-ce"),
        &data,
        &dir.path().join("out"),
        &["--set", "train.skip_invalid_rows=true", "--max-steps", "1"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("skipped 4 malformed rows"), "{message}");
    assert!(message.contains("train.csv:line 3"), "{message}");
    assert!(message.contains("runs on to line 6"), "{message}");
    // Warnings are plain text when stderr is not a terminal.
    assert!(!message.contains('\u{1b}'), "{message:?}");
}

#[test]
fn errors_are_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt");
    let output = run(&[
        "rank",
        "--model",
        fixture("models/tiny-bert-ce").to_str().unwrap(),
        "--query",
        "q",
        "--documents",
        missing.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output).matches("os error 2").count(),
        1,
        "{}",
        stderr(&output)
    );

    // A panicking plugin: its message and location once, in the error, and no hook output.
    let cases = serde_json::json!({"cases": [
        {"id": "panics", "loss": "PanickingLoss", "config": {}, "kind": "pair",
         "logits": [0.5, -0.5], "labels": [1, 0], "scored_pairs": [[0, 0], [1, 0]],
         "expected_loss": 1.0, "expected_grad": [0.0, 0.0]}
    ]});
    let path = dir.path().join("cases.json");
    std::fs::write(&path, cases.to_string()).unwrap();
    let library = plugin_library("panicking-plugin");
    let output = crosstrain()
        .env("RUST_BACKTRACE", "1")
        .args([
            "--plugin",
            library.to_str().unwrap(),
            "losses",
            "check",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let all = stdout(&output) + &stderr(&output);
    assert_eq!(all.matches("index out of bounds").count(), 1, "{all}");
    assert!(all.contains("panicking/src/lib.rs:"), "{all}");
    assert!(!all.contains("stack backtrace"), "{all}");
}

#[cfg(unix)]
#[test]
fn weights_and_optimizer_state_follow_the_umask_like_the_other_files() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    write_pairs(&data);
    let output = dir.path().join("out");
    let result = train(
        &fixture("models/tiny-bert-ce"),
        &data,
        &output,
        &["--set", "save_steps=2", "--max-steps", "3"],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    let mode = |p: PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    let expected = mode(output.join("config.json"));
    assert_eq!(mode(output.join("model.safetensors")), expected);
    assert_eq!(
        mode(output.join("checkpoint-2/optimizer.safetensors")),
        expected
    );
    assert_eq!(
        mode(output.join("checkpoint-2/model.safetensors")),
        expected
    );
}
