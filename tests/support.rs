//! Helpers shared by the whole-binary tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The `crosstrain` binary under test, with no plugin path inherited from the environment.
pub fn crosstrain() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_crosstrain"));
    command.env_remove("CROSSTRAIN_PLUGIN_PATH");
    command
}

/// Runs `crosstrain` with these arguments.
pub fn run(args: &[&str]) -> Output {
    crosstrain().args(args).output().expect("crosstrain runs")
}

/// stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A file under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// The plugin crates the tests load, built once per test binary.
const PLUGIN_PACKAGES: [&str; 4] = [
    "crosstrain-example-plugin",
    "wrong-contract-plugin",
    "panicking-plugin",
    "not-a-plugin",
];

/// The shared library of one of the plugin crates, built with the same cargo, target
/// directory and profile as the test binary (so the dependencies are already compiled).
pub fn plugin_library(package: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let profile_dir = BUILT.get_or_init(|| {
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_crosstrain"));
        let profile_dir = binary.parent().expect("binary has a folder").to_path_buf();
        let target_dir = profile_dir.parent().expect("profile folder has a parent");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut build = Command::new(cargo);
        build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("build")
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir
            .file_name()
            .is_some_and(|name| name == "release")
        {
            build.arg("--release");
        }
        for package in PLUGIN_PACKAGES {
            build.args(["-p", package]);
        }
        let output = build.output().expect("cargo runs");
        assert!(
            output.status.success(),
            "building the plugin fixtures failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        profile_dir
    });
    profile_dir.join(format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    ))
}

/// The files of a model directory that transformers and sentence-transformers read.
pub const MODEL_FILES: [&str; 7] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "config_sentence_transformers.json",
    "modules.json",
    "sentence_bert_config.json",
];

/// A JSON file, parsed.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `crosstrain train --config CONFIG --output OUTPUT` plus more arguments.
pub fn train_cli(config: &Path, output: &Path, more: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--config",
        config.to_str().expect("UTF-8 path"),
        "--output",
        output.to_str().expect("UTF-8 path"),
    ];
    args.extend_from_slice(more);
    run(&args)
}

/// A copy of the tiny BERT fixture with dropout off in `dir/tiny-no-dropout`, so that runs
/// compare exactly (trajectories.json's way).
pub fn tiny_model_without_dropout(dir: &Path) -> PathBuf {
    let target = dir.join("tiny-no-dropout");
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(fixture("models/tiny-bert-ce")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
    }
    let config_file = target.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_file).unwrap()).unwrap();
    config["hidden_dropout_prob"] = serde_json::json!(0.0);
    config["attention_probs_dropout_prob"] = serde_json::json!(0.0);
    std::fs::write(&config_file, config.to_string()).unwrap();
    target
}

/// 16 labelled pairs.
pub fn write_pairs(path: &Path) {
    let text: String = (0..16)
        .map(|i| {
            format!(
                "{{\"query\": \"query {i}\", \"document\": \"document {} about {i}\", \"label\": {}}}\n",
                i * 7,
                i % 2
            )
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// A copy of the tiny model, so that a run that wrongly deleted its input could not harm
/// the fixtures.
pub fn copy_model(dir: &Path) -> PathBuf {
    let source = fixture("models/tiny-bert-ce");
    let target = dir.join("model");
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
        }
    }
    target
}

/// The arguments of `crosstrain train` of the tiny BERT on `data` into `output` with BCE,
/// batches of 4, no ONNX export and no checkpoints unless `more` sets `save_steps` (a setting
/// may be given once on the command line).
pub fn train_args(model: &Path, data: &Path, output: &Path, more: &[&str]) -> Vec<String> {
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
        "--no-export-onnx",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    if !more
        .iter()
        .any(|arg| *arg == "--save-steps" || arg.starts_with("save_steps="))
    {
        args.extend(["--save-steps".to_string(), "0".to_string()]);
    }
    args.extend(more.iter().map(|arg| arg.to_string()));
    args
}

/// Runs [`train_args`].
pub fn train(model: &Path, data: &Path, output: &Path, more: &[&str]) -> Output {
    crosstrain()
        .args(train_args(model, data, output, more))
        .output()
        .expect("crosstrain runs")
}

/// Copies a directory with its subfolders (a model and its module folders).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Makes sure the ONNX Runtime library is available, fetching it with the project's script.
pub fn ensure_onnxruntime() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        if crosstrain::onnx::library_path().is_err() {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-onnxruntime.sh");
            let status = std::process::Command::new("bash")
                .arg(script)
                .status()
                .expect("bash runs");
            assert!(status.success(), "scripts/fetch-onnxruntime.sh failed");
        }
        crosstrain::onnx::library_path().expect("ONNX Runtime library available");
    });
}

/// The training losses a run logged in its `metrics.jsonl`, in order.
pub fn losses_of(output: &Path) -> Vec<f64> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["loss"].as_f64()
        })
        .collect()
}
