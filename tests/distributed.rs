//! Data-parallel training on MPI (issue 24): `mpirun -np 2` with a per-rank batch of 8 trains
//! as one process with a batch of 16; a rank that dies ends the job and `--resume` continues
//! it; a rank started on other data is refused. Built only with `--features mpi`
//! (`required-features` in host/Cargo.toml), run by `.ci/run` after the README's test
//! command; needs Open MPI's `mpirun` on PATH.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{crosstrain, stderr, stdout};

/// 32 labeled pairs of varied lengths (so the two ranks pad their halves differently).
fn write_pairs(path: &Path, seed: usize) {
    let words = [
        "pasta", "sauce", "tomato", "basil", "garlic", "rocket", "engine", "fuel", "orbit",
        "launch", "piano", "chord", "melody", "tempo",
    ];
    let mut lines = String::new();
    for row in 0..32 {
        let pick = |n: usize, salt: usize| -> String {
            (0..n)
                .map(|i| words[(row * 7 + i * 3 + salt + seed) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        };
        let query = pick(2 + row % 4, 1);
        let document = pick(4 + (row * 5) % 9, 5);
        let label = (row * 3 + seed) % 2;
        lines.push_str(&json!({"query": query, "document": document, "label": label}).to_string());
        lines.push('\n');
    }
    std::fs::write(path, lines).unwrap();
}

fn train_args<'a>(
    model: &'a Path,
    data: &'a Path,
    output: &'a Path,
    batch: &'a str,
) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        model.to_str().unwrap(),
        "--train",
        data.to_str().unwrap(),
        "--loss",
        "BinaryCrossEntropyLoss",
        "--lr",
        "1e-3",
        "--warmup-ratio",
        "0.1",
        "--batch-size",
        batch,
        "--logging-steps",
        "1",
        "--no-export-onnx",
        "--output",
        output.to_str().unwrap(),
    ]
}

/// `mpirun -np 2 crosstrain ARGS`.
fn mpirun() -> Command {
    let mut command = Command::new("mpirun");
    command
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .env_remove("CROSSTRAIN_PLUGIN_PATH")
        // One compute thread per rank: two ranks on a 2-core machine.
        .env("RAYON_NUM_THREADS", "1")
        .arg(env!("CARGO_BIN_EXE_crosstrain"));
    command
}

fn losses(output: &Path) -> Vec<f64> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok()?["loss"].as_f64())
        .collect()
}

fn weights(output: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(output.join("model.safetensors"), &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

#[test]
fn two_ranks_of_eight_train_as_one_process_of_sixteen() {
    let dir = tempfile::tempdir().unwrap();
    let model = support::tiny_model_without_dropout(dir.path());
    let data = dir.path().join("train.jsonl");
    write_pairs(&data, 0);
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    let single = crosstrain()
        .args(train_args(&model, &data, &one, "16"))
        .args(["--epochs", "2"])
        .output()
        .unwrap();
    assert_ok(&single);
    let distributed = mpirun()
        .args(train_args(&model, &data, &two, "8"))
        .args(["--epochs", "2", "--json"])
        .output()
        .unwrap();
    assert_ok(&distributed);
    // Rank 0 alone reports.
    assert_eq!(
        stdout(&distributed).lines().count(),
        1,
        "{}",
        stdout(&distributed)
    );

    let (a, b) = (losses(&one), losses(&two));
    assert_eq!(a.len(), 4, "32 rows, global batch 16, 2 epochs");
    assert_eq!(a.len(), b.len());
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "step {}: {x} vs {y}",
            step + 1
        );
    }
    // Every weight within 1e-5 but the attention key biases: softmax is blind to a bias
    // added to every key, so their gradient is zero in exact arithmetic, and what the float
    // sums leave of it (~1e-9, different for a batch of 16 and two of 8) AdamW scales up to
    // steps of the learning rate. They change no logit, which the scores below check.
    let (a, b) = (weights(&one), weights(&two));
    let mut largest = (0f32, String::new());
    for (name, values) in &a {
        if name.ends_with("attention.self.key.bias") {
            continue;
        }
        for (x, y) in values.iter().zip(&b[name]) {
            if (x - y).abs() > largest.0 {
                largest = ((x - y).abs(), name.clone());
            }
        }
    }
    assert!(largest.0 <= 1e-5, "{} differs by {}", largest.1, largest.0);
    let scores = |model: &Path| -> Vec<f64> {
        let output = crosstrain()
            .args([
                "predict",
                "--model",
                model.to_str().unwrap(),
                "--json",
                "--pairs",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert_ok(&output);
        let rows: Vec<Vec<f64>> = serde_json::from_str(stdout(&output).trim()).unwrap();
        rows.concat()
    };
    let (x, y) = (scores(&one), scores(&two));
    assert_eq!(x.len(), 32);
    for (x, y) in x.iter().zip(&y) {
        assert!((x - y).abs() <= 1e-5, "logits {x} vs {y}");
    }
    // And training moved them.
    let start = weights(&model);
    assert_ne!(start["classifier.weight"], a["classifier.weight"]);

    let args: Value =
        serde_json::from_str(&std::fs::read_to_string(two.join("training_args.json")).unwrap())
            .unwrap();
    assert_eq!(args["world_size"], 2);
    let card = std::fs::read_to_string(two.join("README.md")).unwrap();
    assert!(card.contains("data-parallel on 2 ranks"), "{card}");
}

/// The PID of rank `rank` among the children of `launcher`.
fn rank_pid(launcher: u32, rank: usize) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let is_rank = environ
            .split(|&b| b == 0)
            .any(|var| var == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes());
        let exe = std::fs::read_link(entry.path().join("exe")).unwrap_or_default();
        if is_rank && exe.file_name().is_some_and(|n| n == "crosstrain") && pid != launcher {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_killed_rank_ends_the_job_and_resume_continues_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = support::tiny_model_without_dropout(dir.path());
    let data = dir.path().join("train.jsonl");
    write_pairs(&data, 1);
    let full = dir.path().join("full");
    let killed = dir.path().join("killed");
    let more = ["--epochs", "10", "--save-steps", "1"];

    let job = mpirun()
        .args(train_args(&model, &data, &killed, "8"))
        .args(more)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !killed.join("checkpoint-3").is_dir() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint-3 after two minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = rank_pid(job.id(), 1).expect("rank 1 is running");
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let ended = job.wait_with_output().unwrap();
    assert!(!ended.status.success(), "the job went on without rank 1");
    let message = stderr(&ended);
    assert!(message.contains("rank 1"), "{message}");
    assert!(!killed.join("model.safetensors").exists());

    let resumed = mpirun()
        .args(train_args(&model, &data, &killed, "8"))
        .args(more)
        .arg("--resume")
        .output()
        .unwrap();
    assert_ok(&resumed);
    let uninterrupted = mpirun()
        .args(train_args(&model, &data, &full, "8"))
        .args(more)
        .output()
        .unwrap();
    assert_ok(&uninterrupted);
    assert_eq!(weights(&full), weights(&killed));
    assert_eq!(losses(&full), losses(&killed));

    // A world of another size is refused on resume.
    let alone = crosstrain()
        .args(train_args(&model, &data, &killed, "8"))
        .args(more)
        .args(["--resume", killed.join("checkpoint-3").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!alone.status.success());
    assert!(
        stderr(&alone).contains("job of 2 ranks"),
        "{}",
        stderr(&alone)
    );
}

#[test]
fn a_rank_started_on_other_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = support::tiny_model_without_dropout(dir.path());
    // The same recipe (`--train train.jsonl`) in two working directories whose files differ.
    for (name, seed) in [("a", 0), ("b", 1)] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        write_pairs(&dir.path().join(name).join("train.jsonl"), seed);
    }
    let output = dir.path().join("out");
    let binary = env!("CARGO_BIN_EXE_crosstrain");
    let relative = Path::new("train.jsonl");
    let mut job = Command::new("mpirun");
    job.args(["--allow-run-as-root", "--oversubscribe"]);
    for name in ["a", "b"] {
        if name == "b" {
            job.arg(":");
        }
        job.args([
            "-np",
            "1",
            "-wdir",
            dir.path().join(name).to_str().unwrap(),
            binary,
        ])
        .args(train_args(&model, relative, &output, "8"));
    }
    let refused = job.output().unwrap();
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("rank 1 of 2 has another data than rank 0"),
        "{message}"
    );
    assert!(!output.join("model.safetensors").exists());
}

/// Gradient accumulation and gradient caching on two ranks: micro-batches of 4 rows per rank,
/// two per step, with the pairs scored in chunks of 2, against one process with micro-batches
/// of 8.
#[test]
fn accumulation_and_gradient_caching_on_two_ranks_match_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let model = support::tiny_model_without_dropout(dir.path());
    let data = dir.path().join("train.jsonl");
    write_pairs(&data, 2);
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let more = [
        "--epochs",
        "1",
        "--gradient-accumulation-steps",
        "2",
        "--mini-batch-size",
        "2",
    ];
    assert_ok(
        &crosstrain()
            .args(train_args(&model, &data, &one, "8"))
            .args(more)
            .output()
            .unwrap(),
    );
    assert_ok(
        &mpirun()
            .args(train_args(&model, &data, &two, "4"))
            .args(more)
            .output()
            .unwrap(),
    );
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!(a.len(), 2, "32 rows, micro-batches of 8, two per step");
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "{x} vs {y}");
    }
    let (a, b) = (weights(&one), weights(&two));
    for (name, values) in &a {
        if name.ends_with("attention.self.key.bias") {
            continue;
        }
        for (x, y) in values.iter().zip(&b[name]) {
            assert!((x - y).abs() <= 1e-5, "{name}: {x} vs {y}");
        }
    }
}
