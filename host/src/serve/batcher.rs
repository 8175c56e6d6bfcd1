//! Dynamic batching: the pairs of every request in flight share one queue, and one scoring
//! thread takes them out in batches bounded by a token budget and a pair count.
//!
//! A request is admitted whole or not at all: the queue is bounded in pairs (queued and being
//! scored), and a request that would overflow it is refused at once (the server answers 429)
//! instead of growing the queue. The thread waits a short window after the first request of
//! a batch so that concurrent small requests fill one forward pass, then takes requests from
//! the front, whole, while they fit the budget (at least one, however large). Inside the
//! batch the scorer orders pairs longest first and splits them into forward passes of
//! `forward_batch_size`, one per CPU lane; every request gets its own rows back in its own
//! order.
//!
//! A request whose client has gone (its receiver dropped) is skipped before scoring and
//! costs nothing. A batch that fails is scored again request by request, so a scoring error
//! fails only the requests that cause it; a panic in the scorer is caught the same way and
//! the thread goes on serving.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crosstrain_model::PairScorer;
use tokio::sync::oneshot;

/// The scorer the server shares between its request handlers (which count tokens with its
/// tokenizer) and the scoring thread.
pub type SharedScorer = Arc<dyn PairScorer + Send + Sync>;

/// How the scoring thread forms batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchingOptions {
    /// Most tokens (after truncation) in one batch.
    pub max_batch_tokens: usize,
    /// Most pairs in one batch.
    pub max_batch_pairs: usize,
    /// How long the thread waits after the first request of a batch for others to join it.
    pub batch_window: Duration,
    /// Most pairs queued or being scored at once; a request that would pass it gets 429.
    pub max_queue_pairs: usize,
    /// Pairs per forward pass inside a batch.
    pub forward_batch_size: usize,
}

/// Why a request's scores did not come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The queue holds too many pairs to admit this request.
    Overloaded {
        /// Pairs queued or being scored.
        queued: usize,
        /// The bound.
        limit: usize,
    },
    /// The scorer failed on this request's pairs.
    Scoring(String),
    /// The server is shutting down and takes no new requests.
    ShuttingDown,
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Overloaded { queued, limit } => write!(
                f,
                "the model is overloaded: {queued} pairs are queued (at most {limit}); retry later"
            ),
            Self::Scoring(message) => write!(f, "scoring failed: {message}"),
            Self::ShuttingDown => write!(f, "the server is shutting down"),
        }
    }
}

/// Raw logits of one request's pairs, in its order, or why not.
pub type BatchReply = Result<Vec<Vec<f32>>, BatchError>;

/// What the scoring thread reports after each batch (the server turns it into metrics).
#[derive(Debug, Clone, Copy)]
pub struct BatchReport {
    /// Pairs scored.
    pub pairs: usize,
    /// Their tokens after truncation.
    pub tokens: usize,
    /// Requests in the batch.
    pub requests: usize,
    /// Time in the scorer.
    pub inference: Duration,
}

/// One request's pairs.
struct Job {
    pairs: Vec<(String, String)>,
    /// Each pair's tokens after truncation.
    tokens: Vec<usize>,
    reply: oneshot::Sender<BatchReply>,
    admitted_at: Instant,
    /// Released when the job is dropped: answered, cancelled or failed alike.
    queued_pairs: Arc<AtomicUsize>,
}

impl Job {
    fn token_total(&self) -> usize {
        self.tokens.iter().sum()
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.queued_pairs
            .fetch_sub(self.pairs.len(), Ordering::SeqCst);
    }
}

struct QueueState {
    jobs: VecDeque<Job>,
    closed: bool,
}

struct Shared {
    state: Mutex<QueueState>,
    arrived: Condvar,
    queued_pairs: Arc<AtomicUsize>,
    options: BatchingOptions,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding the lock cannot leave the queue half-updated (every update
        // is one push or pop), so a poisoned lock is still a usable queue.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The queue and its scoring thread.
pub struct Batcher {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Batcher {
    /// Starts the scoring thread. `report` is called after every batch.
    pub fn start(
        scorer: SharedScorer,
        options: BatchingOptions,
        report: impl Fn(BatchReport) + Send + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                closed: false,
            }),
            arrived: Condvar::new(),
            queued_pairs: Arc::new(AtomicUsize::new(0)),
            options,
        });
        let worker_shared = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name("crosstrain-scoring".into())
            .spawn(move || score_until_closed(&worker_shared, scorer.as_ref(), &report))?;
        Ok(Self {
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Queues one request's pairs (with each pair's token count after truncation). Refused
    /// at once when the queue would hold more than its bound, or the server is closing.
    pub fn submit(
        &self,
        pairs: Vec<(String, String)>,
        tokens: Vec<usize>,
    ) -> Result<oneshot::Receiver<BatchReply>, BatchError> {
        debug_assert_eq!(pairs.len(), tokens.len());
        let limit = self.shared.options.max_queue_pairs;
        let count = pairs.len();
        let admitted =
            self.shared
                .queued_pairs
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |queued| {
                    (queued + count <= limit).then_some(queued + count)
                });
        if let Err(queued) = admitted {
            return Err(BatchError::Overloaded { queued, limit });
        }
        let (reply, receiver) = oneshot::channel();
        // Built before the lock so that a refusal below drops it (releasing its pairs).
        let job = Job {
            pairs,
            tokens,
            reply,
            admitted_at: Instant::now(),
            queued_pairs: Arc::clone(&self.shared.queued_pairs),
        };
        let mut state = self.shared.lock();
        if state.closed {
            return Err(BatchError::ShuttingDown);
        }
        state.jobs.push_back(job);
        drop(state);
        self.shared.arrived.notify_one();
        Ok(receiver)
    }

    /// Pairs queued or being scored.
    pub fn queued_pairs(&self) -> usize {
        self.shared.queued_pairs.load(Ordering::SeqCst)
    }

    /// Whether the scoring thread is alive.
    pub fn is_running(&self) -> bool {
        self.worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|worker| !worker.is_finished())
    }

    /// Takes no more requests, lets the thread score every one already queued, and waits
    /// for it to end.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.arrived.notify_all();
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(worker) = worker {
            // The thread catches the scorer's panics; a panic here would be in the queue
            // code itself, and the requests it held have been answered by their drop.
            let _ = worker.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.close();
    }
}

/// The scoring thread: batches until the queue is closed and empty.
fn score_until_closed(shared: &Shared, scorer: &dyn PairScorer, report: &dyn Fn(BatchReport)) {
    while let Some(batch) = next_batch(shared) {
        score_batch(scorer, shared.options.forward_batch_size, batch, report);
    }
}

/// Waits for requests and takes the next batch from the front of the queue; `None` once the
/// queue is closed and empty.
fn next_batch(shared: &Shared) -> Option<Vec<Job>> {
    let options = &shared.options;
    let mut state = shared.lock();
    loop {
        // Drop requests whose clients have gone before they are counted or waited for.
        state.jobs.retain(|job| !job.reply.is_closed());
        if !state.jobs.is_empty() {
            break;
        }
        if state.closed {
            return None;
        }
        state = shared
            .arrived
            .wait(state)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    // The window: wait for more requests until the budget is full or the window since the
    // first one has passed (or the server closes: then every queued pair goes now).
    if let Some(first) = state.jobs.front() {
        let deadline = first.admitted_at + options.batch_window;
        loop {
            let (pairs, tokens) = state.jobs.iter().fold((0, 0), |(pairs, tokens), job| {
                (pairs + job.pairs.len(), tokens + job.token_total())
            });
            let now = Instant::now();
            if state.closed
                || pairs >= options.max_batch_pairs
                || tokens >= options.max_batch_tokens
                || now >= deadline
            {
                break;
            }
            state = shared
                .arrived
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
    let mut batch = Vec::new();
    let (mut pairs, mut tokens) = (0, 0);
    while let Some(job) = state.jobs.front() {
        let fits = pairs + job.pairs.len() <= options.max_batch_pairs
            && tokens + job.token_total() <= options.max_batch_tokens;
        if !batch.is_empty() && !fits {
            break;
        }
        pairs += job.pairs.len();
        tokens += job.token_total();
        batch.extend(state.jobs.pop_front());
    }
    Some(batch)
}

/// Scores one batch and answers its requests.
fn score_batch(
    scorer: &dyn PairScorer,
    forward_batch_size: usize,
    batch: Vec<Job>,
    report: &dyn Fn(BatchReport),
) {
    let batch: Vec<Job> = batch
        .into_iter()
        .filter(|job| !job.reply.is_closed())
        .collect();
    if batch.is_empty() {
        return;
    }
    let started = Instant::now();
    let pairs: Vec<(&str, &str)> = batch
        .iter()
        .flat_map(|job| job.pairs.iter().map(|(q, d)| (q.as_str(), d.as_str())))
        .collect();
    let scored = score_guarded(scorer, &pairs, forward_batch_size);
    report(BatchReport {
        pairs: pairs.len(),
        tokens: batch.iter().map(Job::token_total).sum(),
        requests: batch.len(),
        inference: started.elapsed(),
    });
    match scored {
        Ok(logits) => {
            let mut rows = logits.into_iter();
            for job in batch {
                let own: Vec<Vec<f32>> = rows.by_ref().take(job.pairs.len()).collect();
                answer(job, Ok(own));
            }
        }
        Err(message) if batch.len() == 1 => {
            answer(
                batch.into_iter().next().expect("one job"),
                Err(BatchError::Scoring(message)),
            );
        }
        // Which request failed it? Each alone: only those fail.
        Err(_) => {
            for job in batch {
                let pairs: Vec<(&str, &str)> = job
                    .pairs
                    .iter()
                    .map(|(q, d)| (q.as_str(), d.as_str()))
                    .collect();
                let scored =
                    score_guarded(scorer, &pairs, forward_batch_size).map_err(BatchError::Scoring);
                answer(job, scored);
            }
        }
    }
}

/// Sends a reply; a client that has gone meanwhile is no error. The job is dropped first, so
/// its pairs have left the queue's count before the client hears back (a client that sends
/// its next request at once finds the room it freed).
fn answer(mut job: Job, reply: BatchReply) {
    let (placeholder, _) = oneshot::channel();
    let sender = std::mem::replace(&mut job.reply, placeholder);
    drop(job);
    let _ = sender.send(reply);
}

/// The scorer's logits, with its errors and panics as messages.
fn score_guarded(
    scorer: &dyn PairScorer,
    pairs: &[(&str, &str)],
    forward_batch_size: usize,
) -> Result<Vec<Vec<f32>>, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| {
        scorer.predict(pairs, forward_batch_size)
    })) {
        Ok(Ok(logits)) if logits.len() == pairs.len() => Ok(logits),
        Ok(Ok(logits)) => Err(format!(
            "the scorer returned {} rows for {} pairs",
            logits.len(),
            pairs.len()
        )),
        Ok(Err(error)) => Err(error_chain(&error)),
        Err(panic) => Err(format!(
            "the scorer panicked: {}",
            panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into())
        )),
    }
}

/// An error and its sources, joined with `: `.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crosstrain_model::{DefaultActivation, ScoreError};

    /// Scores a pair by its document's length; fails on documents that say "fail" and
    /// panics on "panic"; records every call's pair count. Scoring waits while a test holds
    /// `gate` for writing, so a request can be kept in flight for as long as a test needs.
    struct LengthScorer {
        calls: Mutex<Vec<usize>>,
        tokenizer: crosstrain_model::tokenize::PairTokenizer,
        gate: std::sync::RwLock<()>,
    }

    impl LengthScorer {
        fn new() -> Self {
            let tokenizer = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/models/tiny-bert-ce/tokenizer.json");
            Self {
                calls: Mutex::new(Vec::new()),
                tokenizer: crosstrain_model::tokenize::PairTokenizer::from_file(&tokenizer, 32)
                    .expect("tokenizer"),
                gate: std::sync::RwLock::new(()),
            }
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("a document says fail")]
    struct Refused;

    impl PairScorer for LengthScorer {
        fn predict(
            &self,
            pairs: &[(&str, &str)],
            _batch_size: usize,
        ) -> Result<Vec<Vec<f32>>, ScoreError> {
            let _open = self.gate.read().unwrap();
            self.calls.lock().unwrap().push(pairs.len());
            if pairs.iter().any(|(_, d)| *d == "panic") {
                panic!("a document says panic");
            }
            if pairs.iter().any(|(_, d)| *d == "fail") {
                return Err(ScoreError::new(Refused));
            }
            Ok(pairs.iter().map(|(_, d)| vec![d.len() as f32]).collect())
        }
        fn num_labels(&self) -> usize {
            1
        }
        fn default_activation(&self) -> DefaultActivation {
            DefaultActivation::Identity
        }
        fn max_length(&self) -> usize {
            32
        }
        fn tokenizer(&self) -> &crosstrain_model::tokenize::PairTokenizer {
            &self.tokenizer
        }
    }

    fn options(window_ms: u64) -> BatchingOptions {
        BatchingOptions {
            max_batch_tokens: 1000,
            max_batch_pairs: 8,
            batch_window: Duration::from_millis(window_ms),
            max_queue_pairs: 12,
            forward_batch_size: 4,
        }
    }

    fn request(documents: &[&str]) -> (Vec<(String, String)>, Vec<usize>) {
        (
            documents
                .iter()
                .map(|d| ("query".to_string(), d.to_string()))
                .collect(),
            vec![10; documents.len()],
        )
    }

    fn start(window_ms: u64) -> (Arc<LengthScorer>, Batcher, Arc<Mutex<Vec<BatchReport>>>) {
        let scorer = Arc::new(LengthScorer::new());
        let reports = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&reports);
        let batcher = Batcher::start(scorer.clone(), options(window_ms), move |report| {
            sink.lock().unwrap().push(report)
        })
        .unwrap();
        (scorer, batcher, reports)
    }

    #[test]
    fn concurrent_requests_share_a_batch_and_get_their_own_rows_back() {
        let (scorer, batcher, reports) = start(200);
        let (a, a_tokens) = request(&["a", "bbb"]);
        let (b, b_tokens) = request(&["cc", "dddd", "e"]);
        let a = batcher.submit(a, a_tokens).unwrap();
        let b = batcher.submit(b, b_tokens).unwrap();
        assert_eq!(
            a.blocking_recv().unwrap().unwrap(),
            vec![vec![1.0], vec![3.0]]
        );
        assert_eq!(
            b.blocking_recv().unwrap().unwrap(),
            vec![vec![2.0], vec![4.0], vec![1.0]]
        );
        assert_eq!(*scorer.calls.lock().unwrap(), vec![5], "one batch for both");
        assert_eq!(reports.lock().unwrap()[0].requests, 2);
        assert_eq!(
            batcher.queued_pairs(),
            0,
            "answered requests leave the queue"
        );
    }

    #[test]
    fn batches_stop_at_the_pair_count_and_the_token_budget() {
        let (scorer, batcher, _) = start(300);
        let receivers: Vec<_> = (0..3)
            .map(|_| {
                let (pairs, tokens) = request(&["a", "b", "c", "d"]);
                batcher.submit(pairs, tokens).unwrap()
            })
            .collect();
        for receiver in receivers {
            assert_eq!(receiver.blocking_recv().unwrap().unwrap().len(), 4);
        }
        // 8 pairs at most: two requests, then the third.
        assert_eq!(*scorer.calls.lock().unwrap(), vec![8, 4]);
    }

    #[test]
    fn a_full_queue_refuses_and_frees_its_room_once_answered() {
        let (scorer, batcher, _) = start(300);
        // The first request stays queued or in scoring until the gate opens: however the
        // threads are scheduled, its pairs hold their room when the second one comes.
        let closed = scorer.gate.write().unwrap();
        let (pairs, tokens) = request(&["a"; 10]);
        let first = batcher.submit(pairs, tokens).unwrap();
        let (pairs, tokens) = request(&["b"; 3]);
        assert_eq!(
            batcher.submit(pairs, tokens).unwrap_err(),
            BatchError::Overloaded {
                queued: 10,
                limit: 12
            }
        );
        drop(closed);
        first.blocking_recv().unwrap().unwrap();
        let (pairs, tokens) = request(&["b"; 3]);
        let second = batcher.submit(pairs, tokens).unwrap();
        assert_eq!(second.blocking_recv().unwrap().unwrap().len(), 3);
    }

    #[test]
    fn an_error_or_panic_fails_only_its_own_request() {
        let (_, batcher, _) = start(200);
        let (good, good_tokens) = request(&["fine", "ok"]);
        let (bad, bad_tokens) = request(&["fail"]);
        let (worse, worse_tokens) = request(&["panic"]);
        let good = batcher.submit(good, good_tokens).unwrap();
        let bad = batcher.submit(bad, bad_tokens).unwrap();
        let worse = batcher.submit(worse, worse_tokens).unwrap();
        assert_eq!(
            good.blocking_recv().unwrap().unwrap(),
            vec![vec![4.0], vec![2.0]]
        );
        let bad = bad.blocking_recv().unwrap().unwrap_err();
        assert!(bad.to_string().contains("says fail"), "{bad}");
        let worse = worse.blocking_recv().unwrap().unwrap_err();
        assert!(worse.to_string().contains("panicked"), "{worse}");
        // The thread survives the panic.
        let (after, tokens) = request(&["xyz"]);
        let after = batcher.submit(after, tokens).unwrap();
        assert_eq!(after.blocking_recv().unwrap().unwrap(), vec![vec![3.0]]);
        assert!(batcher.is_running());
    }

    #[test]
    fn a_request_whose_client_has_gone_is_not_scored() {
        let (scorer, batcher, _) = start(200);
        let (gone, gone_tokens) = request(&["a", "b", "c"]);
        drop(batcher.submit(gone, gone_tokens).unwrap());
        let (kept, kept_tokens) = request(&["dd"]);
        let kept = batcher.submit(kept, kept_tokens).unwrap();
        assert_eq!(kept.blocking_recv().unwrap().unwrap(), vec![vec![2.0]]);
        assert_eq!(*scorer.calls.lock().unwrap(), vec![1]);
        assert_eq!(batcher.queued_pairs(), 0);
    }

    #[test]
    fn closing_scores_what_is_queued_and_refuses_the_rest() {
        let (_, batcher, _) = start(10_000);
        let (pairs, tokens) = request(&["abc"]);
        let queued = batcher.submit(pairs, tokens).unwrap();
        batcher.close();
        assert_eq!(queued.blocking_recv().unwrap().unwrap(), vec![vec![3.0]]);
        let (pairs, tokens) = request(&["abc"]);
        assert_eq!(
            batcher.submit(pairs, tokens).unwrap_err(),
            BatchError::ShuttingDown
        );
        assert!(!batcher.is_running());
    }
}
