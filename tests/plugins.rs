//! Whole-binary tests of third-party plugins: the example plugin, and fixtures that are broken
//! on purpose (not a library, no root module, another contract version, a panicking loss, a
//! name clash).

mod support;

use serde_json::Value;
use support::*;

#[test]
fn the_example_plugin_is_listed_and_passes_its_cases() {
    let plugin = plugin_library("crosstrain-example-plugin");
    let plugin = plugin.to_str().unwrap();
    let output = run(&["--plugin", plugin, "losses", "list", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let losses: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let focal = losses
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "FocalBinaryLoss")
        .expect("the example loss is listed");
    assert_eq!(focal["library"], "crosstrain-example-plugin");
    assert!(focal["citation"].as_str().unwrap().contains("lin2017focal"));
    assert_eq!(focal["default_config"]["gamma"], 2.0);
    assert_eq!(losses.as_array().unwrap().len(), 13);

    let cases = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/custom-loss-plugin/cases.json");
    let output = run(&[
        "--plugin",
        plugin,
        "losses",
        "check",
        cases.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stdout(&output));
    assert!(stdout(&output).lines().any(|l| l == "3 passed, 0 failed"));

    let output = run(&["--plugin", plugin, "losses", "cite", "FocalBinaryLoss"]);
    assert!(stdout(&output).contains("lin2017focal"));
}

#[test]
fn plugin_directories_come_from_crosstrain_plugin_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        plugin_library("crosstrain-example-plugin"),
        dir.path().join("libfocal.so"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("notes.txt"),
        "not a library, and not loaded",
    )
    .unwrap();
    let output = crosstrain()
        .env("CROSSTRAIN_PLUGIN_PATH", dir.path())
        .args(["losses", "show", "FocalBinaryLoss"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));

    // Without the variable, nothing is picked up from anywhere (not even the working dir).
    let output = crosstrain()
        .current_dir(dir.path())
        .args(["losses", "show", "FocalBinaryLoss"])
        .output()
        .unwrap();
    assert!(!output.status.success());

    let output = crosstrain()
        .env("CROSSTRAIN_PLUGIN_PATH", dir.path().join("missing"))
        .args(["losses", "list"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("missing (from CROSSTRAIN_PLUGIN_PATH)"));
}

#[test]
fn a_file_that_is_not_a_shared_library_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libfake.so");
    std::fs::write(&fake, "this is text").unwrap();
    let output = run(&["--plugin", fake.to_str().unwrap(), "losses", "list"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains(fake.to_str().unwrap()), "{message}");
    assert!(
        message.contains("not a loadable shared library"),
        "{message}"
    );
    assert!(!message.contains("panicked"), "{message}");
}

#[test]
fn a_library_without_our_root_module_is_a_clear_error() {
    let library = plugin_library("not-a-plugin");
    let output = run(&["--plugin", library.to_str().unwrap(), "losses", "list"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("libnot_a_plugin"), "{message}");
    assert!(
        message.contains("exports no crosstrain loss library"),
        "{message}"
    );
}

#[test]
fn a_plugin_built_for_another_contract_version_is_refused() {
    let library = plugin_library("wrong-contract-plugin");
    let output = run(&["--plugin", library.to_str().unwrap(), "losses", "list"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("libwrong_contract_plugin"), "{message}");
    assert!(
        message.contains("contract version 999, but this host speaks version 1"),
        "{message}"
    );
}

#[test]
fn a_panic_in_compute_fails_that_call_and_the_process_goes_on() {
    let library = plugin_library("panicking-plugin");
    let cases = serde_json::json!({"cases": [
        {"id": "panics", "loss": "PanickingLoss", "config": {}, "kind": "pair",
         "logits": [0.5, -0.5], "labels": [1, 0], "scored_pairs": [[0, 0], [1, 0]],
         "expected_loss": 1.0, "expected_grad": [0.0, 0.0]},
        // Runs after the panic: the built-in, addressed by its qualified name.
        {"id": "after", "loss": "crosstrain-losses/BinaryCrossEntropyLoss", "config": {},
         "kind": "pair", "logits": [0.0], "labels": [1], "scored_pairs": [[0, 0]],
         "expected_loss": std::f64::consts::LN_2, "expected_grad": [-0.5]}
    ]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.json");
    std::fs::write(&path, cases.to_string()).unwrap();
    let output = run(&[
        "--plugin",
        library.to_str().unwrap(),
        "losses",
        "check",
        path.to_str().unwrap(),
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL panics"), "{text}");
    assert!(
        text.contains("panicking-plugin/PanickingLoss.compute: panicked in PanickingLoss::compute"),
        "{text}"
    );
    assert!(text.contains("PASS after"), "{text}");
    assert!(text.lines().any(|l| l == "1 passed, 1 failed"), "{text}");
}

#[test]
fn a_name_clash_asks_for_the_qualified_name() {
    let library = plugin_library("panicking-plugin");
    let library = library.to_str().unwrap();
    let output = run(&[
        "--plugin",
        library,
        "losses",
        "show",
        "BinaryCrossEntropyLoss",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains(
            "crosstrain-losses/BinaryCrossEntropyLoss, panicking-plugin/BinaryCrossEntropyLoss"
        ),
        "{message}"
    );
    let output = run(&[
        "--plugin",
        library,
        "losses",
        "show",
        "panicking-plugin/BinaryCrossEntropyLoss",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let shown: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(shown["library"], "panicking-plugin");
}

#[test]
fn the_same_library_loaded_twice_is_loaded_once_and_a_second_copy_is_refused() {
    let plugin = plugin_library("crosstrain-example-plugin");
    let plugin = plugin.to_str().unwrap();
    let output = run(&[
        "--plugin", plugin, "--plugin", plugin, "losses", "list", "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("libcopy.so");
    std::fs::copy(plugin, &copy).unwrap();
    let output = run(&[
        "--plugin",
        plugin,
        "--plugin",
        copy.to_str().unwrap(),
        "losses",
        "list",
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("both named \"crosstrain-example-plugin\""),
        "{}",
        stderr(&output)
    );
}

/// Issue 19, classes 2, 3 and the `--plugin DIR` case of 10: a cut-short copy of a plugin is
/// refused with an error naming it (it used to kill the process with SIGBUS), a bare name is a
/// path in the working directory (never the loader's search path), and a directory is "not a
/// file".
#[test]
fn truncated_libraries_bare_names_and_directories_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(plugin_library("crosstrain-example-plugin")).unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let cut = plugins.join("libfocal_cut.so");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let refused = |output: std::process::Output, needle: &str| {
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        let message = stderr(&output);
        assert!(message.contains(needle), "{message}");
        // Said once, not repeated by the error chain.
        assert_eq!(message.matches(needle).count(), 1, "{message}");
    };
    refused(
        run(&["--plugin", cut.to_str().unwrap(), "losses", "list"]),
        "libfocal_cut.so",
    );
    refused(
        crosstrain()
            .env("CROSSTRAIN_PLUGIN_PATH", &plugins)
            .args(["losses", "list"])
            .output()
            .unwrap(),
        "libfocal_cut.so",
    );
    // `libc.so.6` names ./libc.so.6, which does not exist here, not the system's libc.
    let output = crosstrain()
        .current_dir(dir.path())
        .args(["--plugin", "libc.so.6", "losses", "list"])
        .output()
        .unwrap();
    refused(
        output,
        &format!("{}: no such file", dir.path().join("libc.so.6").display()),
    );
    // A file of that name in the working directory is the one loaded (and refused, here,
    // because it is the cut copy).
    std::fs::copy(&cut, dir.path().join("libc.so.6")).unwrap();
    let output = crosstrain()
        .current_dir(dir.path())
        .args(["--plugin", "libc.so.6", "losses", "list"])
        .output()
        .unwrap();
    refused(
        output,
        &format!("{}", dir.path().join("libc.so.6").display()),
    );
    refused(
        run(&["--plugin", plugins.to_str().unwrap(), "losses", "list"]),
        "not a file",
    );
}
