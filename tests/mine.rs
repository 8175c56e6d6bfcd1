//! `crosstrain mine-hard-negatives` and `crosstrain convert` on a made-up corpus whose BM25
//! scores are computed by hand here, every output format, every option, the dense retriever
//! on the tiny fixture model, and training on each output directly.
//!
//! The corpus: every document has three distinct tokens, so BM25's length factor is 1 and a
//! matched term contributes exactly its idf, `ln(1 + (N − df + 0.5)/(df + 0.5))`. N = 9
//! (six corpus lines, then the three positives). "alpha" and "beta" each appear in 3
//! documents (idf `A`), "kappa" and "mu" each in 4 (idf `K`). So for "alpha beta": c0 and the
//! positive score 2A, c1 and c2 score A; for "kappa mu": c5 and both positives 2K, c3 and c4
//! K. Ties go to the lower corpus index.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{fixture, run, stderr, stdout, train_cli};

const C0: &str = "alpha beta delta";
const C1: &str = "alpha zeta eta";
const C2: &str = "beta theta iota";
const C3: &str = "kappa rho sigma";
const C4: &str = "mu tau upsilon";
const C5: &str = "kappa mu phi";
const Q0: &str = "alpha beta";
const Q1: &str = "kappa mu";
const P0: &str = "alpha beta gamma";
const P1A: &str = "kappa lambda mu";
const P1B: &str = "kappa mu nu";

fn idf(n: f64, df: f64) -> f64 {
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// idf of "alpha"/"beta" and of "kappa"/"mu".
fn idfs() -> (f64, f64) {
    (idf(9.0, 3.0), idf(9.0, 4.0))
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    corpus: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let data = path.join("pairs.jsonl");
    let rows = [(Q0, P0), (Q1, P1A), (Q1, P1B)];
    let text: String = rows
        .iter()
        .map(|(q, p)| format!("{}\n", serde_json::json!({"query": q, "answer": p})))
        .collect();
    std::fs::write(&data, text).unwrap();
    let corpus = path.join("corpus.txt");
    std::fs::write(&corpus, [C0, C1, C2, C3, C4, C5].join("\n") + "\n").unwrap();
    Setup {
        _dir: dir,
        dir: path,
        data,
        corpus,
    }
}

/// Runs the miner into `name` with extra options; returns the rows and the JSON summary.
fn mine(setup: &Setup, name: &str, options: &[&str]) -> (Vec<Value>, Value) {
    mine_corpus(setup, &setup.corpus, name, options)
}

/// [`mine`] over another corpus file.
fn mine_corpus(setup: &Setup, corpus: &Path, name: &str, options: &[&str]) -> (Vec<Value>, Value) {
    let output = setup.dir.join(name);
    let mut args = vec![
        "mine-hard-negatives",
        "--data",
        setup.data.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--overwrite",
        "--json",
    ];
    args.extend_from_slice(options);
    let result = run(&args);
    assert!(result.status.success(), "{}", stderr(&result));
    let summary: Value = serde_json::from_str(stdout(&result).trim()).unwrap();
    (read_rows(&output), summary)
}

fn read_rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The (anchor, negative) pairs of triplet rows.
fn triplet_negatives(rows: &[Value]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|row| {
            (
                row["query"].as_str().unwrap().to_string(),
                row["answer"].as_str().unwrap().to_string(),
                row["negative"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn triplets(expected: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    expected
        .iter()
        .map(|(a, p, n)| (a.to_string(), p.to_string(), n.to_string()))
        .collect()
}

#[test]
fn triplets_by_default_with_every_positive_exploded() {
    let setup = setup();
    let (rows, summary) = mine(&setup, "triplet.jsonl", &[]);
    assert_eq!(
        triplet_negatives(&rows),
        triplets(&[
            (Q0, P0, C0),
            (Q0, P0, C1),
            (Q0, P0, C2),
            (Q1, P1A, C5),
            (Q1, P1A, C3),
            (Q1, P1A, C4),
            (Q1, P1B, C5),
            (Q1, P1B, C3),
            (Q1, P1B, C4),
        ])
    );
    assert_eq!(summary["queries"], 2);
    assert_eq!(summary["corpus"], 9);
    // range_max = range_min + num_negatives + max_positives = 0 + 3 + 2.
    assert_eq!(summary["range_max"], 5);
    assert_eq!(summary["rows"], 9);
    assert_eq!(summary["possible_rows"], 9);
}

#[test]
fn scores_are_the_bm25_scores() {
    let setup = setup();
    let (a, k) = idfs();
    let (rows, _) = mine(&setup, "scores.jsonl", &["--output-scores"]);
    let scores = |row: &Value| -> Vec<f64> {
        row["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let close = |got: &[f64], want: &[f64]| {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    };
    close(&scores(&rows[0]), &[2.0 * a, 2.0 * a]);
    close(&scores(&rows[1]), &[2.0 * a, a]);
    close(&scores(&rows[3]), &[2.0 * k, 2.0 * k]);
    close(&scores(&rows[4]), &[2.0 * k, k]);
}

#[test]
fn n_tuple_labeled_pair_and_labeled_list_layouts() {
    let setup = setup();
    let (rows, _) = mine(&setup, "n.jsonl", &["--output-format", "n-tuple"]);
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0],
        serde_json::json!({"query": Q0, "answer": P0, "negative_1": C0, "negative_2": C1, "negative_3": C2})
    );
    let keys: Vec<&String> = rows[0].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["query", "answer", "negative_1", "negative_2", "negative_3"]
    );
    assert_eq!(rows[2]["answer"], P1B);

    let (rows, _) = mine(&setup, "pair.jsonl", &["--output_format", "labeled-pair"]);
    let got: Vec<(String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["answer"].as_str().unwrap().to_string(),
                r["label"].as_i64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, i64)> = [
        (P0, 1),
        (C0, 0),
        (C1, 0),
        (C2, 0),
        (P1A, 1),
        (P1B, 1),
        (C5, 0),
        (C3, 0),
        (C4, 0),
    ]
    .iter()
    .map(|(t, l)| (t.to_string(), *l))
    .collect();
    assert_eq!(got, want);

    let (rows, _) = mine(&setup, "list.jsonl", &["--output-format", "labeled-list"]);
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[1],
        serde_json::json!({"query": Q1, "answer": [P1A, C5, C3, C4], "labels": [1, 0, 0, 0]})
    );
    let (rows, _) = mine(
        &setup,
        "list-scores.jsonl",
        &["--output-format", "labeled-list", "--output-scores"],
    );
    assert_eq!(rows[0]["scores"].as_array().unwrap().len(), 4);
    assert!(rows[0].get("labels").is_none());
}

#[test]
fn range_min_and_range_max() {
    let setup = setup();
    let (rows, summary) = mine(
        &setup,
        "r.jsonl",
        &["--range-min", "1", "--num-negatives", "1"],
    );
    assert_eq!(summary["range_max"], 4);
    assert_eq!(
        triplet_negatives(&rows),
        triplets(&[(Q0, P0, C1), (Q1, P1A, C3), (Q1, P1B, C3)])
    );
    let (rows, _) = mine(
        &setup,
        "r2.jsonl",
        &["--range-max", "2", "--num-negatives", "2"],
    );
    assert_eq!(
        triplet_negatives(&rows)[..2],
        triplets(&[(Q0, P0, C0), (Q0, P0, C1)])
    );
    // Too few candidates left for the negatives asked: refused, naming the options.
    let output = setup.dir.join("bad.jsonl");
    let result = run(&[
        "mine-hard-negatives",
        "--data",
        setup.data.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--range-min",
        "2",
        "--range-max",
        "3",
        "--num-negatives",
        "2",
    ]);
    assert!(!result.status.success());
    assert!(
        stderr(&result).contains("range_min=2"),
        "{}",
        stderr(&result)
    );
    assert!(!output.exists());
}

#[test]
fn max_and_min_score() {
    let setup = setup();
    // 2K ≈ 1.597 and 2A ≈ 2.10 are above 1.5; A ≈ 1.05 and K ≈ 0.80 are not.
    let (rows, summary) = mine(
        &setup,
        "max.jsonl",
        &["--max-score", "1.5", "--num-negatives", "2"],
    );
    assert_eq!(
        triplet_negatives(&rows),
        triplets(&[
            (Q0, P0, C1),
            (Q0, P0, C2),
            (Q1, P1A, C3),
            (Q1, P1A, C4),
            (Q1, P1B, C3),
            (Q1, P1B, C4),
        ])
    );
    // A score filter widens the default window to range_min + 10·num_negatives + max_positives.
    assert_eq!(summary["range_max"], 22);
    assert_eq!(summary["skipped"]["max_score"], 2);
    let (rows, summary) = mine(
        &setup,
        "min.jsonl",
        &["--min-score", "1.0", "--num-negatives", "2"],
    );
    assert_eq!(
        triplet_negatives(&rows),
        triplets(&[(Q0, P0, C0), (Q0, P0, C1), (Q1, P1A, C5), (Q1, P1B, C5)])
    );
    assert_eq!(summary["skipped"]["min_score"], 2);
    assert_eq!(summary["possible_rows"], 6);
}

#[test]
fn absolute_and_relative_margins_use_the_lowest_positive() {
    let setup = setup();
    // Positives: 2A for "alpha beta", 2K (both) for "kappa mu". Absolute 0.5 drops c0
    // (2A + 0.5 > 2A) and c5 (2K + 0.5 > 2K), keeps A + 0.5 < 2A and K + 0.5 < 2K.
    let expected = triplets(&[
        (Q0, P0, C1),
        (Q0, P0, C2),
        (Q1, P1A, C3),
        (Q1, P1A, C4),
        (Q1, P1B, C3),
        (Q1, P1B, C4),
    ]);
    let (rows, summary) = mine(
        &setup,
        "abs.jsonl",
        &["--absolute-margin", "0.5", "--num-negatives", "2"],
    );
    assert_eq!(triplet_negatives(&rows), expected);
    assert_eq!(summary["skipped"]["absolute_margin"], 2);
    // Relative 0.45: thresholds 0.55·2A ≈ 1.155 > A and 0.55·2K ≈ 0.878 > K.
    let (rows, summary) = mine(
        &setup,
        "rel.jsonl",
        &["--relative_margin", "0.45", "--num-negatives", "2"],
    );
    assert_eq!(triplet_negatives(&rows), expected);
    assert_eq!(summary["skipped"]["relative_margin"], 2);
    // Relative 0.6: thresholds 0.4·2A ≈ 0.84 < A and 0.4·2K ≈ 0.64 < K: nothing is left.
    let (rows, summary) = mine(
        &setup,
        "rel2.jsonl",
        &["--relative-margin", "0.6", "--num-negatives", "2"],
    );
    assert!(rows.is_empty());
    assert_eq!(summary["skipped"]["relative_margin"], 6);
}

#[test]
fn random_sampling_is_seeded_and_stays_in_the_window() {
    let setup = setup();
    let options = |seed: &'static str| {
        [
            "--sampling-strategy",
            "random",
            "--num-negatives",
            "2",
            "--seed",
            seed,
        ]
    };
    let (first, _) = mine(&setup, "a.jsonl", &options("1"));
    let (again, _) = mine(&setup, "b.jsonl", &options("1"));
    assert_eq!(first, again);
    let mut seen = std::collections::BTreeSet::new();
    for seed in ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"] {
        let (rows, _) = mine(&setup, "c.jsonl", &options(seed));
        for (query, _, negative) in triplet_negatives(&rows) {
            if query == Q0 {
                assert!([C0, C1, C2].contains(&negative.as_str()), "{negative}");
                seen.insert(negative);
            }
        }
    }
    assert_eq!(seen.len(), 3, "every candidate of the window gets drawn");
}

#[test]
fn include_positives_keeps_them_and_writes_n_tuples() {
    let setup = setup();
    let (rows, summary) = mine(&setup, "inc.jsonl", &["--include-positives"]);
    assert_eq!(summary["output_format"], "n-tuple");
    // c0 and the positive tie at 2A; c0 has the lower corpus index.
    assert_eq!(rows[0]["negative_1"], C0);
    assert_eq!(rows[0]["negative_2"], P0);
    assert_eq!(rows[0]["negative_3"], C1);
}

#[test]
fn bad_input_names_the_file_and_column_or_line() {
    let setup = setup();
    let output = setup.dir.join("out.jsonl");
    let base = |extra: &[&str]| {
        let mut args = vec![
            "mine-hard-negatives",
            "--data",
            setup.data.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let result = base(&["--anchor-column-name", "question"]);
    assert!(!result.status.success());
    let message = stderr(&result);
    assert!(
        message.contains("pairs.jsonl")
            && message.contains("\"question\"")
            && message.contains("query, answer"),
        "{message}"
    );
    let corpus = setup.dir.join("corpus.jsonl");
    std::fs::write(&corpus, "{\"text\": \"fine\"}\n{\"body\": \"no text\"}\n").unwrap();
    let result = base(&["--corpus", corpus.to_str().unwrap()]);
    let message = stderr(&result);
    assert!(
        message.contains("corpus.jsonl") && message.contains("line 2") && message.contains("body"),
        "{message}"
    );
    std::fs::write(&output, "keep me\n").unwrap();
    let result = base(&[]);
    assert!(
        stderr(&result).contains("--overwrite"),
        "{}",
        stderr(&result)
    );
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "keep me\n");
}

/// Dense mining of `corpus` with the embedding model `model`, `chunk` documents at a time,
/// as n-tuples with scores.
fn mine_dense_rows(
    setup: &Setup,
    corpus: &Path,
    model: &str,
    name: &str,
    chunk: &str,
    more: &[&str],
) -> Vec<Value> {
    let mut options = vec![
        "--model",
        model,
        "--chunk-size",
        chunk,
        "--output-format",
        "n-tuple",
        "--output-scores",
    ];
    options.extend_from_slice(more);
    let (rows, summary) = mine_corpus(setup, corpus, name, &options);
    assert_eq!(summary["retriever"], "dense");
    rows
}

#[test]
fn dense_retrieval_streams_the_corpus_in_chunks() {
    let setup = setup();
    let model = fixture("models/tiny-bert-ce");
    let model = model.to_str().unwrap();
    // The query's own text is in the corpus: with normalised embeddings it scores 1 and is
    // the hardest negative.
    let corpus = setup.dir.join("dense.txt");
    std::fs::write(
        &corpus,
        format!("{C0}\n{C1}\n{Q0}\n{C3}\n{C4}\n{C5}\n{C2}\n"),
    )
    .unwrap();
    let mine_dense = |name: &str, chunk: &str, more: &[&str]| {
        mine_dense_rows(&setup, &corpus, model, name, chunk, more)
    };
    // The same rows whatever the chunking; scores agree to float rounding (a chunk's texts are
    // embedded in other batches, padded to other lengths).
    let same = |a: &[Value], b: &[Value]| {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            for key in ["query", "answer", "negative_1", "negative_2", "negative_3"] {
                assert_eq!(x[key], y[key], "{key}");
            }
            for (s, t) in x["scores"]
                .as_array()
                .unwrap()
                .iter()
                .zip(y["scores"].as_array().unwrap())
            {
                assert!(
                    (s.as_f64().unwrap() - t.as_f64().unwrap()).abs() < 1e-5,
                    "{s} vs {t}"
                );
            }
        }
    };
    let chunked = mine_dense("chunked.jsonl", "2", &[]);
    let whole = mine_dense("whole.jsonl", "1000", &[]);
    same(&chunked, &whole);
    // Prompts go in front of what is embedded: an empty one changes nothing, another does.
    same(
        &mine_dense("empty.jsonl", "3", &["--query-prompt", ""]),
        &whole,
    );
    let prompted = mine_dense("prompted.jsonl", "3", &["--corpus-prompt", "passage: "]);
    assert_ne!(prompted[0]["scores"], whole[0]["scores"]);
    assert_eq!(chunked[0]["negative_1"], Q0);
    let scores = chunked[0]["scores"].as_array().unwrap();
    assert!(
        (scores[1].as_f64().unwrap() - 1.0).abs() < 1e-5,
        "{scores:?}"
    );
    for row in &chunked {
        let scores: Vec<f64> = row["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(scores
            .iter()
            .all(|s| (-1.0 - 1e-5..=1.0 + 1e-5).contains(s)));
        assert!(scores[1..].windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    }
}

#[test]
fn cross_encoder_rescoring_replaces_the_scores() {
    let setup = setup();
    let model = fixture("models/tiny-bert-ce");
    let (rows, summary) = mine(
        &setup,
        "ce.jsonl",
        &[
            "--cross-encoder",
            model.to_str().unwrap(),
            "--max-score",
            "0.999",
            "--output-scores",
        ],
    );
    assert_eq!(summary["rescored"], true);
    // Sigmoid outputs of the cross-encoder, not BM25 scores (which exceed 1 here).
    for row in &rows {
        for score in row["scores"].as_array().unwrap() {
            let score = score.as_f64().unwrap();
            assert!(score > 0.0 && score < 1.0, "{score}");
        }
    }
    let model = crosstrain::model::CrossEncoder::load_dir(
        &fixture("models/tiny-bert-ce"),
        &Default::default(),
    )
    .unwrap();
    let logit = model.predict(&[(Q0, P0)], 1).unwrap()[0][0];
    let expected = 1.0 / (1.0 + (-f64::from(logit)).exp());
    let positive = rows[0]["scores"][0].as_f64().unwrap();
    assert!(
        (positive - expected).abs() < 1e-5,
        "{positive} vs {expected}"
    );
}

/// Trains one step on a mined file with a loss that takes its format.
fn train_on(dir: &Path, file: &Path, loss: &str) {
    let config = dir.join(format!("{loss}.toml"));
    std::fs::write(
        &config,
        format!(
            "model = {:?}\nloss = \"{loss}\"\ntrain = {{ files = {:?} }}\nbatch_size = 2\n\
             max_steps = 1\nexport_onnx = false\nsave_steps = 0\n",
            fixture("models/tiny-bert-ce").display().to_string(),
            file.display().to_string()
        ),
    )
    .unwrap();
    let output = dir.join(format!(
        "model-{loss}-{}",
        file.file_stem().unwrap().to_string_lossy()
    ));
    let result = train_cli(&config, &output, &["--json"]);
    assert!(
        result.status.success(),
        "{loss} on {}: {}",
        file.display(),
        stderr(&result)
    );
    let summary: Value = serde_json::from_str(stdout(&result).trim()).unwrap();
    assert_eq!(summary["global_step"], 1);
}

#[test]
fn train_accepts_every_output_format() {
    let setup = setup();
    for (format, scores, loss) in [
        ("triplet", false, "MultipleNegativesRankingLoss"),
        ("n-tuple", false, "CachedMultipleNegativesRankingLoss"),
        ("labeled-pair", false, "BinaryCrossEntropyLoss"),
        ("labeled-list", false, "LambdaLoss"),
        ("triplet", true, "MarginMSELoss"),
        ("n-tuple", true, "MarginMSELoss"),
        ("labeled-list", true, "ListNetLoss"),
    ] {
        let name = format!("{format}-{scores}.jsonl");
        let mut options = vec!["--output-format", format];
        if scores {
            options.push("--output-scores");
        }
        mine(&setup, &name, &options);
        train_on(&setup.dir, &setup.dir.join(&name), loss);
    }
}

#[test]
fn convert_writes_triplets_that_train_takes() {
    let setup = setup();
    let data = setup.dir.join("classes.jsonl");
    let rows = [
        ("pasta with tomato sauce", 0),
        ("risotto with mushrooms", 0),
        ("lasagne recipe", 0),
        ("fixing a flat bike tyre", 1),
        ("adjusting bike brakes", 1),
        ("alone in its class", 2),
    ];
    let text: String = rows
        .iter()
        .map(|(t, l)| format!("{}\n", serde_json::json!({"text": t, "label": l})))
        .collect();
    std::fs::write(&data, text).unwrap();
    let output = setup.dir.join("triplets.jsonl");
    let result = run(&[
        "convert",
        "--data",
        data.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(
        stdout(&result).contains("1 anchors skipped"),
        "{}",
        stdout(&result)
    );
    let triplets = read_rows(&output);
    assert_eq!(triplets.len(), 5);
    let class = |text: &str| rows.iter().find(|(t, _)| *t == text).unwrap().1;
    for row in &triplets {
        let (a, p, n) = (
            row["anchor"].as_str().unwrap(),
            row["positive"].as_str().unwrap(),
            row["negative"].as_str().unwrap(),
        );
        assert_eq!(class(a), class(p));
        assert_ne!(a, p);
        assert_ne!(class(a), class(n));
    }
    train_on(&setup.dir, &output, "MultipleNegativesRankingLoss");
}

/// Dense retrieval with a ModernBERT or a DeBERTa-v2 encoder (issue 18): the query's own
/// text, put in the corpus, is its hardest negative with a cosine of 1, whatever the chunking.
#[test]
fn dense_retrieval_with_modernbert_and_deberta_encoders() {
    let setup = setup();
    for name in ["tiny-modernbert-ce", "tiny-deberta-v2-ce"] {
        let model = fixture(&format!("models/{name}"));
        let model = model.to_str().unwrap();
        let corpus = setup.dir.join("dense.txt");
        std::fs::write(
            &corpus,
            format!("{C0}\n{C1}\n{Q0}\n{C3}\n{C4}\n{C5}\n{C2}\n"),
        )
        .unwrap();
        let mine = |output: &str, chunk: &str| {
            mine_dense_rows(
                &setup,
                &corpus,
                model,
                &format!("{name}-{output}"),
                chunk,
                &[],
            )
        };
        let chunked = mine("chunked.jsonl", "2");
        let whole = mine("whole.jsonl", "1000");
        assert_eq!(chunked.len(), whole.len(), "{name}");
        assert_eq!(chunked[0]["negative_1"], Q0, "{name}");
        let scores = chunked[0]["scores"].as_array().unwrap();
        assert!(
            (scores[1].as_f64().unwrap() - 1.0).abs() < 1e-5,
            "{name}: {scores:?}"
        );
        for (x, y) in chunked.iter().zip(&whole) {
            assert_eq!(x["negative_1"], y["negative_1"], "{name}");
        }
    }
}
