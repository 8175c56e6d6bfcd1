//! `crosstrain serve` over real loopback HTTP: both APIs give `crosstrain rank`'s scores on
//! both backends and for a decoder reranker, the bad-input battery, overload (429, then the
//! next request is served), a vanished client, the API key, metrics, and SIGTERM draining
//! the requests in flight.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{crosstrain, fixture, run, stdout};

/// A running server, killed when dropped.
struct Server {
    child: Child,
    base: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `crosstrain serve --port 0 ARGS` and waits for its address.
    fn start(args: &[&str]) -> Self {
        let mut child = crosstrain()
            .args(["serve", "--port", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("crosstrain serve starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
        let mut seen = String::new();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    seen.push_str(&line);
                    seen.push('\n');
                    if let Some(address) = line.strip_prefix("crosstrain serve: listening on ") {
                        break address.to_string();
                    }
                }
                _ => panic!("the server exited before listening:\n{seen}"),
            }
        };
        let stderr = Arc::new(Mutex::new(seen));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Self {
            child,
            base,
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs JSON; returns the status and the body.
    fn post(&self, path: &str, body: &str) -> (u16, String) {
        self.post_with(path, body, &[])
    }

    fn post_with(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut request = ureq::post(&self.url(path)).set("Content-Type", "application/json");
        for (name, value) in headers {
            request = request.set(name, value);
        }
        answer(request.send_string(body))
    }

    fn get(&self, path: &str) -> (u16, String) {
        answer(ureq::get(&self.url(path)).call())
    }

    /// The value of an unlabelled metric.
    fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .map_or(0.0, |value| value.trim().parse().unwrap())
    }

    /// Sends a /rerank request of the five documents over a raw connection and waits until
    /// its pairs are queued; the connection is returned open.
    fn queue_raw_request(&self) -> TcpStream {
        let address = self.base.trim_start_matches("http://");
        let body = json!({"query": QUERY, "texts": documents()}).to_string();
        let mut stream = TcpStream::connect(address).unwrap();
        write!(
            stream,
            "POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        self.wait_for_queued(5.0);
        stream
    }

    /// Waits until `pairs` pairs are queued.
    fn wait_for_queued(&self, pairs: f64) {
        let started = Instant::now();
        while self.metric("crosstrain_queue_pairs") < pairs {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the request never queued"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < limit, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match result {
        Ok(response) => (response.status(), response.into_string().unwrap()),
        Err(ureq::Error::Status(status, response)) => (status, response.into_string().unwrap()),
        Err(error) => panic!("transport error: {error}"),
    }
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

const QUERY: &str = "how do plants make food";

fn documents() -> Vec<String> {
    [
        "Photosynthesis turns light, water and carbon dioxide into sugar in the leaves.",
        "The stock market closed higher on Friday.",
        "Plants use chlorophyll to capture sunlight.",
        "A recipe for bread needs flour, water, yeast and salt, kneaded and left to rise.",
        "Roots take up water and minerals from the soil.",
    ]
    .map(String::from)
    .to_vec()
}

/// `crosstrain rank --json`'s score per document index.
fn rank_scores(model: &Path, extra: &[&str]) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("documents.txt");
    std::fs::write(&file, documents().join("\n")).unwrap();
    let mut args = vec![
        "rank",
        "--model",
        model.to_str().unwrap(),
        "--query",
        QUERY,
        "--documents",
        file.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let output = run(&args);
    assert!(output.status.success(), "{output:?}");
    let ranked = parse(&stdout(&output));
    let mut scores = vec![f32::NAN; documents().len()];
    for entry in ranked.as_array().unwrap() {
        scores[entry["corpus_id"].as_u64().unwrap() as usize] =
            entry["score"].as_f64().unwrap() as f32;
    }
    scores
}

/// Checks both rerank APIs against `rank`'s scores.
fn assert_apis_match_rank(server: &Server, expected: &[f32]) {
    let (status, body) = server.post(
        "/rerank",
        &json!({"query": QUERY, "texts": documents(), "return_text": true}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let ranks = parse(&body);
    let ranks = ranks.as_array().unwrap();
    assert_eq!(ranks.len(), expected.len());
    let mut previous = f64::INFINITY;
    for rank in ranks {
        let index = rank["index"].as_u64().unwrap() as usize;
        let score = rank["score"].as_f64().unwrap();
        assert!(
            (score as f32 - expected[index]).abs() < 1e-6,
            "{index}: {score} vs {}",
            expected[index]
        );
        assert_eq!(rank["text"], documents()[index]);
        assert!(score <= previous, "best first");
        previous = score;
    }
    // Strings and {"text"} objects alike; top_n keeps the best.
    let mixed: Vec<Value> = documents()
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            if i % 2 == 0 {
                json!(text)
            } else {
                json!({"text": text})
            }
        })
        .collect();
    let (status, body) = server.post(
        "/v1/rerank",
        &json!({"model": "m", "query": QUERY, "documents": mixed, "top_n": 3, "return_documents": true})
            .to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let response = parse(&body);
    let results = response["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let mut best: Vec<usize> = (0..expected.len()).collect();
    best.sort_by(|&a, &b| expected[b].total_cmp(&expected[a]));
    for (result, &index) in results.iter().zip(&best) {
        assert_eq!(result["index"].as_u64().unwrap() as usize, index);
        let score = result["relevance_score"].as_f64().unwrap() as f32;
        assert!((score - expected[index]).abs() < 1e-6);
        assert_eq!(result["document"]["text"], documents()[index]);
    }
    assert!(response["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(response["model"], "m");
}

#[test]
fn both_apis_give_rank_scores_on_candle_and_for_a_decoder() {
    let model = fixture("models/tiny-bert-ce");
    let expected = rank_scores(&model, &[]);
    let server = Server::start(&["--model", model.to_str().unwrap()]);
    assert_apis_match_rank(&server, &expected);

    // /predict: one pair gives its labels, a list gives a list; raw scores are the logits.
    let (status, body) = server.post(
        "/predict",
        &json!({"inputs": [QUERY, documents()[0]]}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let single = parse(&body);
    assert_eq!(single[0]["label"], "LABEL_0");
    assert!((single[0]["score"].as_f64().unwrap() as f32 - expected[0]).abs() < 1e-6);
    let pairs: Vec<Value> = documents().iter().map(|d| json!([QUERY, d])).collect();
    let (status, body) = server.post(
        "/predict",
        &json!({"inputs": pairs, "raw_scores": true}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    for (index, labels) in parse(&body).as_array().unwrap().iter().enumerate() {
        let logit = labels[0]["score"].as_f64().unwrap() as f32;
        let probability = 1.0 / (1.0 + (-logit).exp());
        assert!((probability - expected[index]).abs() < 1e-6);
    }
    let (status, info) = server.get("/info");
    assert_eq!(status, 200);
    assert_eq!(parse(&info)["max_input_length"], 128);
    let (status, document) = server.get("/openapi.json");
    assert_eq!(status, 200);
    assert!(parse(&document)["paths"]["/v1/rerank"]["post"].is_object());
    drop(server);

    // A decoder reranker (yes/no logit score, chat template, left padding).
    let decoder = fixture("models/tiny-qwen3-reranker");
    let expected = rank_scores(&decoder, &[]);
    let server = Server::start(&["--model", decoder.to_str().unwrap()]);
    assert_apis_match_rank(&server, &expected);
}

#[test]
fn both_apis_give_rank_scores_on_onnx_runtime() {
    support::ensure_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    support::copy_tree(&fixture("models/tiny-bert-ce"), &model);
    let output = run(&["export-onnx", "--model", model.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let expected = rank_scores(&model, &["--backend", "onnx"]);
    let server = Server::start(&["--model", model.to_str().unwrap(), "--backend", "onnx"]);
    assert_apis_match_rank(&server, &expected);
    assert_eq!(parse(&server.get("/info").1)["backend"], "onnx");
}

#[test]
fn bad_input_gets_a_json_error_with_its_status_and_the_server_goes_on() {
    let model = fixture("models/tiny-bert-ce");
    let server = Server::start(&[
        "--model",
        model.to_str().unwrap(),
        "--max-client-batch-size",
        "3",
        "--max-text-chars",
        "400",
        "--max-body-bytes",
        "2000",
        "--max-length",
        "16",
    ]);
    let long_text = "word ".repeat(60);
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        ("/rerank", "{\"query\": ".into(), 400, "Validation", "parse"),
        (
            "/rerank",
            json!({"query": "q", "texts": "not a list"}).to_string(),
            422,
            "Validation",
            "texts",
        ),
        (
            "/rerank",
            json!({"query": 7, "texts": ["d"]}).to_string(),
            422,
            "Validation",
            "query",
        ),
        (
            "/rerank",
            json!({"texts": ["d"]}).to_string(),
            422,
            "Validation",
            "query",
        ),
        (
            "/rerank",
            json!({"query": "q", "texts": []}).to_string(),
            400,
            "Empty",
            "texts",
        ),
        (
            "/rerank",
            json!({"query": "  ", "texts": ["d"]}).to_string(),
            422,
            "Validation",
            "query",
        ),
        (
            "/rerank",
            json!({"query": "q", "texts": ["a", "b", "c", "d"]}).to_string(),
            422,
            "Validation",
            "--max-client-batch-size",
        ),
        (
            "/rerank",
            json!({"query": "q", "texts": ["x".repeat(401)]}).to_string(),
            413,
            "Validation",
            "--max-text-chars",
        ),
        (
            "/rerank",
            json!({"query": "q", "texts": vec!["x".repeat(300); 3], "return_text": true})
                .to_string()
                + &" ".repeat(1200),
            413,
            "Validation",
            "length limit",
        ),
        (
            "/rerank",
            json!({"query": "q", "texts": [long_text], "truncate": false}).to_string(),
            413,
            "Validation",
            "truncate",
        ),
        (
            "/rerank",
            json!({"query": "q", "texts": ["d"], "truncation_direction": "left"}).to_string(),
            422,
            "Validation",
            "truncation_direction",
        ),
        (
            "/rerank",
            json!({"query": "q", "texts": ["d"], "raw_scores": "yes"}).to_string(),
            422,
            "Validation",
            "raw_scores",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": []}).to_string(),
            400,
            "Empty",
            "documents",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a", "b"], "top_n": 0}).to_string(),
            422,
            "Validation",
            "top_n",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a", "b"], "top_n": 3}).to_string(),
            422,
            "Validation",
            "top_n",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a", "b"], "top_n": -1}).to_string(),
            422,
            "Validation",
            "top_n",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": [{"title": "no text"}]}).to_string(),
            422,
            "Validation",
            "documents",
        ),
        (
            "/predict",
            json!({"inputs": "one text"}).to_string(),
            422,
            "Validation",
            "pairs",
        ),
        (
            "/predict",
            json!({"inputs": [["q", "d"], ["q"]]}).to_string(),
            422,
            "Validation",
            "inputs`[1]",
        ),
        (
            "/predict",
            json!({"inputs": []}).to_string(),
            400,
            "Empty",
            "inputs",
        ),
    ];
    for (path, body, status, error_type, names) in cases {
        let (got, text) = server.post(path, &body);
        assert_eq!(got, status, "{path} {body:.80}: {text}");
        let error = parse(&text);
        assert_eq!(error["error_type"], error_type, "{path} {body:.80}: {text}");
        assert!(
            error["error"].as_str().unwrap().contains(names),
            "{path} {body:.80}: {text} should name {names}"
        );
    }
    // Without a JSON content type.
    let (status, _) = answer(
        ureq::post(&server.url("/rerank"))
            .send_string(&json!({"query": "q", "texts": ["d"]}).to_string()),
    );
    assert_eq!(status, 415);
    let (status, text) = server.get("/no-such-route");
    assert_eq!(
        (status, parse(&text)["error_type"].as_str()),
        (404, Some("NotFound"))
    );
    // Truncated when the request allows it (the default), as rank truncates.
    let (status, text) = server.post(
        "/rerank",
        &json!({"query": "q", "texts": ["word ".repeat(60)]}).to_string(),
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(server.get("/health").0, 200);
}

#[test]
fn a_full_queue_answers_429_and_the_next_request_is_served() {
    let model = fixture("models/tiny-bert-ce");
    // A long window holds the first request in the queue while the second arrives.
    let server = Arc::new(Server::start(&[
        "--model",
        model.to_str().unwrap(),
        "--max-queue-pairs",
        "6",
        "--max-client-batch-size",
        "5",
        "--batch-window-ms",
        "1500",
    ]));
    let body = json!({"query": QUERY, "texts": documents()}).to_string();
    let first = {
        let server = Arc::clone(&server);
        let body = body.clone();
        std::thread::spawn(move || server.post("/rerank", &body))
    };
    server.wait_for_queued(5.0);
    let (status, text) = server.post("/rerank", &body);
    assert_eq!(status, 429, "{text}");
    assert_eq!(parse(&text)["error_type"], "Overloaded");
    assert_eq!(first.join().unwrap().0, 200);
    let (status, text) = server.post("/rerank", &body);
    assert_eq!(status, 200, "{text}");
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("crosstrain_requests_total{route=\"/rerank\",status=\"429\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_vanished_client_costs_no_scoring() {
    let model = fixture("models/tiny-bert-ce");
    let server = Server::start(&[
        "--model",
        model.to_str().unwrap(),
        "--batch-window-ms",
        "800",
    ]);
    // The client goes away while its request waits in the queue.
    drop(server.queue_raw_request());

    let (status, _) = server.post(
        "/rerank",
        &json!({"query": QUERY, "texts": ["one"]}).to_string(),
    );
    assert_eq!(status, 200);
    assert_eq!(
        server.metric("crosstrain_pairs_total"),
        1.0,
        "only the live request was scored"
    );
    assert_eq!(server.metric("crosstrain_queue_pairs"), 0.0);
}

#[test]
fn an_api_key_guards_the_scoring_routes() {
    let model = fixture("models/tiny-bert-ce");
    let server = Server::start(&["--model", model.to_str().unwrap(), "--api-key", "s3cret"]);
    let body = json!({"query": "q", "texts": ["d"]}).to_string();
    let (status, text) = server.post("/rerank", &body);
    assert_eq!(
        (status, parse(&text)["error_type"].as_str()),
        (401, Some("Unauthorized"))
    );
    assert_eq!(
        server
            .post_with("/v1/rerank", &body, &[("Authorization", "Bearer wrong")])
            .0,
        401
    );
    assert_eq!(server.get("/info").0, 401);
    let (status, text) = server.post_with("/rerank", &body, &[("Authorization", "Bearer s3cret")]);
    assert_eq!(status, 200, "{text}");
    assert_eq!(server.get("/health").0, 200);
    assert_eq!(server.get("/metrics").0, 200);
}

#[test]
fn sigterm_finishes_the_requests_in_flight_and_exits_zero() {
    let model = fixture("models/tiny-bert-ce");
    let mut server = Server::start(&[
        "--model",
        model.to_str().unwrap(),
        "--batch-window-ms",
        "1000",
    ]);
    let address = server.base.trim_start_matches("http://").to_string();
    let mut stream = server.queue_raw_request();
    server.terminate();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let ranks: Value = parse(response.split("\r\n\r\n").nth(1).unwrap());
    assert_eq!(ranks.as_array().unwrap().len(), 5);
    let status = server.wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let log = server.stderr.lock().unwrap().clone();
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
    assert!(TcpStream::connect(&address).is_err(), "no longer accepting");
}

#[test]
fn predict_gives_every_label_of_a_classifier_and_rerank_refuses_it() {
    let model = fixture("models/tiny-bert-ce-3labels");
    let pairs = tempfile::tempdir().unwrap();
    let file = pairs.path().join("pairs.jsonl");
    std::fs::write(
        &file,
        format!("{}\n", json!({"query": QUERY, "document": documents()[0]})),
    )
    .unwrap();
    let output = run(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        file.to_str().unwrap(),
        "--activation",
        "softmax",
        "--json",
    ]);
    assert!(output.status.success(), "{output:?}");
    let expected: Vec<f32> =
        serde_json::from_str::<Vec<Vec<f32>>>(&stdout(&output)).unwrap()[0].clone();
    let server = Server::start(&["--model", model.to_str().unwrap()]);
    let (status, body) = server.post(
        "/predict",
        &json!({"inputs": [QUERY, documents()[0]]}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let labels = parse(&body);
    let labels = labels.as_array().unwrap();
    assert_eq!(labels.len(), 3);
    let config = support::read_json(&model.join("config.json"));
    let mut previous = f64::INFINITY;
    for entry in labels {
        let label = entry["label"].as_str().unwrap();
        let index = (0..3)
            .find(|i| config["id2label"][i.to_string()] == label)
            .unwrap_or_else(|| panic!("{label} is not in id2label"));
        let score = entry["score"].as_f64().unwrap();
        assert!((score as f32 - expected[index]).abs() < 1e-6, "{label}");
        assert!(score <= previous, "best label first");
        previous = score;
    }
    let (status, body) = server.post(
        "/rerank",
        &json!({"query": "q", "texts": ["d"]}).to_string(),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("3 outputs"), "{body}");
    assert_eq!(
        parse(&server.get("/info").1)["model_type"]["classifier"]["id2label"]
            .as_object()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn a_decoder_served_with_a_prompt_scores_as_rank_with_that_prompt() {
    let decoder = fixture("models/tiny-qwen3-reranker");
    let prompt = "Judge whether the document answers the question about botany.";
    let expected = rank_scores(&decoder, &["--prompt", prompt]);
    let plain = rank_scores(&decoder, &[]);
    assert!(
        expected
            .iter()
            .zip(&plain)
            .any(|(a, b)| (a - b).abs() > 1e-4),
        "the prompt changes the scores"
    );
    let server = Server::start(&["--model", decoder.to_str().unwrap(), "--prompt", prompt]);
    assert_apis_match_rank(&server, &expected);
}
