//! Whole-binary tests of `crosstrain losses` with the built-in losses.

mod support;

use serde_json::{json, Value};
use support::*;

const BUILTIN_LOSSES: [&str; 12] = [
    "BinaryCrossEntropyLoss",
    "CrossEntropyLoss",
    "MSELoss",
    "MarginMSELoss",
    "MultipleNegativesRankingLoss",
    "CachedMultipleNegativesRankingLoss",
    "LambdaLoss",
    "RankNetLoss",
    "ListNetLoss",
    "PListMLELoss",
    "ListMLELoss",
    "ADRMSELoss",
];

fn list_json() -> Vec<Value> {
    let output = run(&["losses", "list", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_str::<Value>(&stdout(&output))
        .expect("losses list --json prints JSON")
        .as_array()
        .expect("an array")
        .clone()
}

#[test]
fn list_json_has_every_builtin_with_all_fields() {
    let losses = list_json();
    let names: Vec<&str> = losses.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, BUILTIN_LOSSES);
    for loss in &losses {
        for field in [
            "name",
            "library",
            "summary",
            "citation",
            "formats",
            "num_labels",
            "config_schema",
            "default_config",
        ] {
            assert!(loss.get(field).is_some(), "{} lacks {field}", loss["name"]);
        }
        assert_eq!(loss["library"], "crosstrain-losses");
        assert!(!loss["formats"].as_array().unwrap().is_empty());
    }
    let by_name = |name: &str| losses.iter().find(|l| l["name"] == name).unwrap();
    // LOSSES.md: MarginMSE, the listwise losses and ADRMSE cite a paper; the pointwise and MNRL
    // losses only the Sentence-BERT paper.
    assert!(by_name("BinaryCrossEntropyLoss")["citation"].is_null());
    assert!(by_name("LambdaLoss")["citation"]
        .as_str()
        .unwrap()
        .contains("wang2018lambdaloss"));
    assert_eq!(by_name("CrossEntropyLoss")["num_labels"], 0);
    assert_eq!(by_name("MSELoss")["num_labels"], 1);
    let mnrl_formats: Vec<&str> = by_name("MultipleNegativesRankingLoss")["formats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(mnrl_formats, ["anchor-positive", "triplet", "n-tuple"]);
}

#[test]
fn default_configs_equal_the_reference_defaults() {
    let losses = list_json();
    let default =
        |name: &str| losses.iter().find(|l| l["name"] == name).unwrap()["default_config"].clone();
    // sentence-transformers 6.2 constructor defaults (LOSSES.md §1).
    let mnrl = default("MultipleNegativesRankingLoss");
    assert_eq!(mnrl["num_negatives"], 4);
    assert_eq!(mnrl["scale"], 10.0);
    assert_eq!(mnrl["activation_fn"], "sigmoid");
    assert_eq!(
        default("CachedMultipleNegativesRankingLoss")["mini_batch_size"],
        32
    );
    let lambda = default("LambdaLoss");
    assert_eq!(lambda["weighting_scheme"]["name"], "NDCGLoss2PPScheme");
    assert_eq!(lambda["weighting_scheme"]["mu"], 10.0);
    assert_eq!(lambda["reduction_log"], "binary");
    assert_eq!(lambda["eps"], 1e-10);
    assert_eq!(
        default("PListMLELoss")["lambda_weight"]["name"],
        "PListMLELambdaWeight"
    );
    assert_eq!(default("PListMLELoss")["respect_input_order"], true);
    assert_eq!(
        default("BinaryCrossEntropyLoss")["activation_fn"],
        "identity"
    );
    assert_eq!(default("ADRMSELoss")["alpha"], 1.0);
}

#[test]
fn show_prints_the_schema_and_suggests_close_names() {
    let output = run(&["losses", "show", "ListNetLoss"]);
    assert!(output.status.success());
    let text = stdout(&output);
    assert!(text.contains("config schema:"), "{text}");
    assert!(text.contains("\"additionalProperties\": false"), "{text}");
    assert!(text.contains("cao2007learning"), "{text}");

    let output = run(&["losses", "show", "ListNetLoss", "--json"]);
    let shown: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(shown["name"], "ListNetLoss");

    let output = run(&["losses", "show", "LamdaLoss"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("did you mean LambdaLoss?"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn cite_prints_the_named_losses_and_the_project() {
    let output = run(&["losses", "cite", "MarginMSELoss"]);
    assert!(output.status.success());
    let text = stdout(&output);
    assert!(text.contains("hofstätter2021improving"), "{text}");
    assert!(text.contains("@software{crosstrain"), "{text}");
    assert!(text.contains("reimers-2019-sentence-bert"), "{text}");
    assert!(
        !text.contains("wang2018lambdaloss"),
        "only the named loss: {text}"
    );
    let all = stdout(&run(&["losses", "cite"]));
    for key in [
        "wang2018lambdaloss",
        "burges2005learning",
        "schlatt2025rankdistillm",
        "lan2014position",
    ] {
        assert!(all.contains(key), "{key} missing");
    }
}

#[test]
fn golden_cases_from_sentence_transformers_all_pass() {
    // golden_losses.json: 40 cases computed by sentence-transformers 6.2 itself (fp64).
    let output = run(&[
        "losses",
        "check",
        fixture("golden_losses.json").to_str().unwrap(),
    ]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    assert!(text.lines().any(|l| l == "40 passed, 0 failed"), "{text}");
    let output = run(&[
        "losses",
        "check",
        fixture("golden_losses_adrmse.json").to_str().unwrap(),
    ]);
    assert!(stdout(&output).lines().any(|l| l == "4 passed, 0 failed"));
}

/// Issue 20: probability labels for CrossEntropyLoss and the layout's `*_kwargs`, with
/// expectations from torch (scripts/make-soft-label-cases.py); an unsupported kwarg is named.
#[test]
fn probability_label_and_kwargs_cases_pass_and_unknown_kwargs_are_named() {
    let extra = fixture("golden_losses_extra.json");
    let output = run(&["losses", "check", extra.to_str().unwrap()]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    assert!(text.lines().any(|l| l == "7 passed, 0 failed"), "{text}");

    let mut cases: Value = serde_json::from_str(&std::fs::read_to_string(&extra).unwrap()).unwrap();
    cases["cases"][6]["config"] = json!({"mse_kwargs": {"reduction": "sum", "size_average": true}});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.json");
    std::fs::write(&path, cases.to_string()).unwrap();
    let output = run(&["losses", "check", path.to_str().unwrap()]);
    assert!(!output.status.success());
    let text = stdout(&output) + &stderr(&output);
    assert!(
        text.contains("mse_kwargs.size_average: the loss has no setting `size_average`"),
        "{text}"
    );
}

#[test]
fn check_json_reports_each_case_and_the_plan_comparison() {
    let output = run(&[
        "losses",
        "check",
        "--json",
        fixture("golden_losses.json").to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["passed"], 40);
    assert_eq!(report["failed"], 0);
    let cases = report["cases"].as_array().unwrap();
    let case = |id: &str| cases.iter().find(|c| c["id"] == id).unwrap();
    // Deterministic plans are compared with the reference's pairs; sampled MNRL ones are not.
    assert_eq!(case("LambdaLoss/public/01")["plan"], "match");
    assert_eq!(
        case("MultipleNegativesRankingLoss/public/03")["plan"],
        "match"
    );
    assert_eq!(
        case("MultipleNegativesRankingLoss/public/01")["plan"],
        "sampled"
    );
    assert_eq!(case("MarginMSELoss/public/02")["config_dict"], "match");
    assert!(
        case("PListMLELoss/public/05")["grad_max_abs_error"]
            .as_f64()
            .unwrap()
            < 1e-6
    );
}

/// Writes a modified copy of the golden file and returns its path.
fn tampered_cases(edit: impl FnOnce(&mut Value)) -> (tempfile::TempDir, std::path::PathBuf) {
    let text = std::fs::read_to_string(fixture("golden_losses.json")).unwrap();
    let mut document: Value = serde_json::from_str(&text).unwrap();
    edit(&mut document);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.json");
    std::fs::write(&path, document.to_string()).unwrap();
    (dir, path)
}

#[test]
fn check_fails_on_a_wrong_expected_loss_or_gradient() {
    let (_dir, path) = tampered_cases(|document| {
        let cases = document["cases"].as_array_mut().unwrap();
        let loss = cases[0]["expected_loss"].as_f64().unwrap();
        cases[0]["expected_loss"] = (loss * (1.0 + 1e-5)).into();
        let grad = cases[20]["expected_grad"][0][0].as_f64().unwrap();
        cases[20]["expected_grad"][0][0] = (grad + 1e-5).into();
    });
    let output = run(&["losses", "check", path.to_str().unwrap()]);
    let text = stdout(&output);
    assert!(!output.status.success());
    assert!(text.lines().any(|l| l == "38 passed, 2 failed"), "{text}");
    assert!(
        text.contains("FAIL BinaryCrossEntropyLoss/public/01"),
        "{text}"
    );
    assert!(text.contains("gradient differs"), "{text}");
}

#[test]
fn check_reports_a_config_that_fails_the_schema() {
    let (_dir, path) = tampered_cases(|document| {
        let cases = document["cases"].as_array_mut().unwrap();
        cases[0]["config"] = serde_json::json!({"activation_fn": "relu"});
        cases[1]["config"] = serde_json::json!({"pos_weigth": 2.0});
        cases.truncate(2);
    });
    let output = run(&["losses", "check", path.to_str().unwrap()]);
    let text = stdout(&output);
    assert!(text.lines().any(|l| l == "0 passed, 2 failed"), "{text}");
    assert!(text.contains("activation_fn:"), "{text}");
    assert!(
        text.contains("\"identity\", \"sigmoid\", \"tanh\""),
        "{text}"
    );
    assert!(
        text.contains("allowed fields: activation_fn, pos_weight, reduction"),
        "{text}"
    );
}

#[test]
fn check_rejects_a_file_that_is_not_cases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, "{not json").unwrap();
    let output = run(&["losses", "check", path.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("bad.json is not valid JSON"),
        "{}",
        stderr(&output)
    );
}
