//! `report_to = ["tensorboard"]`: the scalars of the run's log (`metrics.jsonl`) also as
//! TensorBoard event files, under transformers' `TensorBoardCallback` tags (`train/loss`,
//! `train/learning_rate`, `eval/loss`, `eval/<evaluator>_<metric>`, ...). The event format
//! (TFRecord framing and the `Event` protobuf) is the `tfrecord` crate's.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use tfrecord::protobuf::event::What;
use tfrecord::{Event, EventMeta, RecordWriter, Summary};

use crate::trainer_state::LogEntry;

/// The file-name suffix of the event files crosstrain writes.
const SUFFIX: &str = "crosstrain";

/// An open event file.
pub struct TensorBoard {
    writer: RecordWriter<Event, BufWriter<File>>,
    path: PathBuf,
}

impl std::fmt::Debug for TensorBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorBoard({})", self.path.display())
    }
}

/// An event-file error (the caller names the folder or file).
fn event_error(_path: &Path, error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

impl TensorBoard {
    /// The run's event file in `dir` (made if missing), named as TensorFlow's writers name
    /// theirs (`events.out.tfevents.<seconds>.<host>.<pid>.crosstrain`), opened with the
    /// `brain.Event:2` version record TensorBoard looks for first, with `history` (the run's
    /// log so far) written into it. Event files an earlier start of this run wrote there (the
    /// `.crosstrain` suffix) are removed first: the new file holds their entries up to the
    /// checkpoint a resumed run restarts from, and none after it, as `metrics.jsonl` does.
    pub fn start(dir: &Path, history: &[LogEntry]) -> std::io::Result<Self> {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("events.out.tfevents.") && name.ends_with(SUFFIX) {
                std::fs::remove_file(entry.path()).map_err(|e| event_error(&entry.path(), e))?;
            }
        }
        let mut board = Self::create(dir)?;
        for entry in history {
            board.write(entry)?;
        }
        Ok(board)
    }

    fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| event_error(dir, e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "crosstrain".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}.{SUFFIX}",
            now.as_secs(),
            std::process::id()
        ));
        let file = File::create(&path).map_err(|e| event_error(&path, e))?;
        let mut writer =
            RecordWriter::from_writer(BufWriter::new(file)).map_err(|e| event_error(&path, e))?;
        writer
            .send(Event {
                wall_time: now.as_secs_f64(),
                step: 0,
                source_metadata: None,
                what: Some(What::FileVersion("brain.Event:2".into())),
            })
            .and_then(|()| writer.flush())
            .map_err(|e| event_error(&path, e))?;
        Ok(Self { writer, path })
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one log entry's scalars and flushes, so TensorBoard sees them as they come.
    pub fn write(&mut self, entry: &LogEntry) -> std::io::Result<()> {
        let wall_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        for (tag, value) in scalars(entry) {
            let summary =
                Summary::from_scalar(&tag, value as f32).map_err(|e| event_error(&self.path, e))?;
            let event = EventMeta::new(entry.step as i64, wall_time).build_with_summary(summary);
            self.writer
                .send(event)
                .map_err(|e| event_error(&self.path, e))?;
        }
        self.writer.flush().map_err(|e| event_error(&self.path, e))
    }
}

/// A log entry's scalars under transformers' `rewrite_logs` tags: `eval_<x>` → `eval/<x>`,
/// everything else → `train/<key>` (the loss, its components, each dataset's loss as
/// `train/<name>_loss`, the learning rate, the gradient norm and the epoch).
pub fn scalars(entry: &LogEntry) -> Vec<(String, f64)> {
    let mut scalars = Vec::new();
    if let Some(loss) = entry.loss {
        scalars.push(("train/loss".to_string(), loss));
    }
    for (name, value) in &entry.loss_components {
        scalars.push((format!("train/{name}"), *value));
    }
    for (name, value) in &entry.dataset_losses {
        scalars.push((format!("train/{name}_loss"), *value));
    }
    if let Some(grad_norm) = entry.grad_norm {
        scalars.push(("train/grad_norm".to_string(), grad_norm));
    }
    if let Some(learning_rate) = entry.learning_rate {
        scalars.push(("train/learning_rate".to_string(), learning_rate));
    }
    for (key, value) in &entry.metrics {
        let tag = match key.strip_prefix("eval_") {
            Some(metric) => format!("eval/{metric}"),
            None => format!("train/{key}"),
        };
        scalars.push((tag, *value));
    }
    scalars.push(("train/epoch".to_string(), entry.epoch));
    scalars
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tfrecord::{EventIter, RecordReaderConfig};

    #[test]
    fn event_files_read_back_with_the_logged_scalars() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("events.out.tfevents.1.h.2.crosstrain"),
            "old",
        )
        .unwrap();
        std::fs::write(dir.path().join("events.out.tfevents.1.h.2.0"), "theirs").unwrap();
        let mut board = TensorBoard::start(dir.path(), &[]).unwrap();
        // An earlier start's file is replaced; another writer's is left alone.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&"events.out.tfevents.1.h.2.0".to_string()));
        let training = LogEntry {
            step: 3,
            epoch: 0.75,
            loss: Some(0.5),
            loss_components: BTreeMap::new(),
            dataset_losses: BTreeMap::from([("qa".to_string(), 0.25)]),
            learning_rate: Some(2e-5),
            grad_norm: Some(1.5),
            metrics: BTreeMap::new(),
        };
        let evaluation = LogEntry {
            step: 4,
            epoch: 1.0,
            loss: None,
            loss_components: BTreeMap::new(),
            dataset_losses: BTreeMap::new(),
            learning_rate: None,
            grad_norm: None,
            metrics: BTreeMap::from([("eval_NanoBEIR_R100_mean_ndcg@10".to_string(), 0.625)]),
        };
        board.write(&training).unwrap();
        board.write(&evaluation).unwrap();
        let events: Vec<Event> = EventIter::open(board.path(), RecordReaderConfig::default())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            events[0].what,
            Some(What::FileVersion("brain.Event:2".into()))
        );
        let read: Vec<(i64, String, f32)> = events[1..]
            .iter()
            .map(|event| {
                let Some(What::Summary(summary)) = &event.what else {
                    panic!("not a summary: {:?}", event.what)
                };
                let value = &summary.value[0];
                let Some(tfrecord::protobuf::summary::value::Value::SimpleValue(number)) =
                    value.value
                else {
                    panic!("not a scalar")
                };
                (event.step, value.tag.clone(), number)
            })
            .collect();
        assert_eq!(
            read,
            vec![
                (3, "train/loss".into(), 0.5),
                (3, "train/qa_loss".into(), 0.25),
                (3, "train/grad_norm".into(), 1.5),
                (3, "train/learning_rate".into(), 2e-5),
                (3, "train/epoch".into(), 0.75),
                (4, "eval/NanoBEIR_R100_mean_ndcg@10".into(), 0.625),
                (4, "train/epoch".into(), 1.0),
            ]
        );
    }
}
