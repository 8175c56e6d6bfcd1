//! NanoBEIR in the layout the Hugging Face hub stores it (`sentence-transformers/NanoBEIR-en`
//! and its translations): four subsets, `corpus` (`_id`, `text`), `queries` (`_id`, `text`),
//! `qrels` (`query-id`, `corpus-id`) and `bm25` (`query-id`, `corpus-ids` ranked), each split
//! per dataset (`NanoMSMARCO`, ...) into Parquet files `{subset}/{split}-*.parquet`. Read
//! into reranking samples as sentence-transformers' `CrossEncoderNanoBEIREvaluator` builds
//! them: per BM25 row, the query, its qrels positives and the BM25 top `rerank_k`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use super::eval_sets::RerankingSample;

/// The NanoBEIR datasets: short name (the reference's `dataset_names`) and the readable one
/// its splits and metric keys use (`Nano{name}`).
pub const NANOBEIR_DATASETS: [(&str, &str); 13] = [
    ("climatefever", "ClimateFEVER"),
    ("dbpedia", "DBPedia"),
    ("fever", "FEVER"),
    ("fiqa2018", "FiQA2018"),
    ("hotpotqa", "HotpotQA"),
    ("msmarco", "MSMARCO"),
    ("nfcorpus", "NFCorpus"),
    ("nq", "NQ"),
    ("quoraretrieval", "QuoraRetrieval"),
    ("scidocs", "SCIDOCS"),
    ("arguana", "ArguAna"),
    ("scifact", "SciFact"),
    ("touche2020", "Touche2020"),
];

/// The reference's default: every dataset except `arguana` and `touche2020`, whose argument
/// retrieval differs from the others' task.
pub fn default_dataset_names() -> Vec<String> {
    NANOBEIR_DATASETS
        .iter()
        .map(|(short, _)| short.to_string())
        .filter(|short| short != "arguana" && short != "touche2020")
        .collect()
}

/// The dataset's split name (`Nano{Readable}`) for a short name, case-insensitively.
pub fn split_name(short: &str) -> Result<String, NanoBeirError> {
    NANOBEIR_DATASETS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(short))
        .map(|(_, readable)| format!("Nano{readable}"))
        .ok_or_else(|| NanoBeirError::UnknownDataset {
            name: short.to_string(),
        })
}

/// What can be wrong with NanoBEIR data.
#[derive(Debug, thiserror::Error)]
pub enum NanoBeirError {
    /// A dataset name outside the collection.
    #[error(
        "{name:?} is not a NanoBEIR dataset; the datasets are climatefever, dbpedia, fever, \
         fiqa2018, hotpotqa, msmarco, nfcorpus, nq, quoraretrieval, scidocs, arguana, scifact, \
         touche2020"
    )]
    UnknownDataset {
        /// The name given.
        name: String,
    },
    /// A subset's split has no Parquet file.
    #[error(
        "{dir}: no Parquet file for subset {subset:?}, split {split:?} (expected \
         {subset}/{split}-*.parquet, the hub's layout)"
    )]
    Missing {
        /// The dataset directory.
        dir: PathBuf,
        /// `corpus`, `queries`, `qrels` or `bm25`.
        subset: String,
        /// `Nano{Name}`.
        split: String,
    },
    /// A file could not be read as Parquet.
    #[error("{path}: {message}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A row lacks a column or has the wrong type, or names an unknown id.
    #[error("{path}: row {row}: {message}")]
    Row {
        /// The file.
        path: PathBuf,
        /// 1-based row.
        row: usize,
        /// What is wrong, naming the column.
        message: String,
    },
    /// The hub download failed.
    #[error(transparent)]
    Download(#[from] crosstrain_model::ModelError),
}

/// The local directory of `dataset_id`: itself when it is a directory, else the hub dataset
/// of that id, of which only the four subsets of `splits` are downloaded.
pub fn resolve_dataset_dir(dataset_id: &str, splits: &[String]) -> Result<PathBuf, NanoBeirError> {
    let path = Path::new(dataset_id);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let wanted = |file: &str| {
        file.ends_with(".parquet")
            && SUBSETS.iter().any(|subset| {
                splits.iter().any(|split| {
                    file.strip_prefix(&format!("{subset}/"))
                        .is_some_and(|rest| rest.starts_with(&format!("{split}-")))
                })
            })
    };
    Ok(crosstrain_model::download_dataset_files(
        dataset_id, &wanted,
    )?)
}

const SUBSETS: [&str; 4] = ["corpus", "queries", "qrels", "bm25"];

/// The Parquet files of one subset's split, in name order.
fn split_files(dir: &Path, subset: &str, split: &str) -> Result<Vec<PathBuf>, NanoBeirError> {
    let folder = dir.join(subset);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| {
                    name.ends_with(".parquet")
                        && (name == format!("{split}.parquet")
                            || name.starts_with(&format!("{split}-")))
                })
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(NanoBeirError::Missing {
            dir: dir.to_path_buf(),
            subset: subset.to_string(),
            split: split.to_string(),
        });
    }
    Ok(files)
}

/// One Parquet row's columns by name.
type Row = HashMap<String, Field>;

/// Every row of a subset's split: `(file, 1-based row in it, columns)`.
fn read_rows(
    dir: &Path,
    subset: &str,
    split: &str,
) -> Result<Vec<(PathBuf, usize, Row)>, NanoBeirError> {
    let mut rows = Vec::new();
    for path in split_files(dir, subset, split)? {
        let parquet_error = |message: String| NanoBeirError::Parquet {
            path: path.clone(),
            message,
        };
        let file = std::fs::File::open(&path).map_err(|e| parquet_error(e.to_string()))?;
        let reader = SerializedFileReader::new(file).map_err(|e| parquet_error(e.to_string()))?;
        let iter = reader
            .get_row_iter(None)
            .map_err(|e| parquet_error(e.to_string()))?;
        for (index, row) in iter.enumerate() {
            let row = row.map_err(|e| parquet_error(format!("row {}: {e}", index + 1)))?;
            let columns: Row = row
                .get_column_iter()
                .map(|(name, field)| (name.clone(), field.clone()))
                .collect();
            rows.push((path.clone(), index + 1, columns));
        }
    }
    Ok(rows)
}

/// An id cell: a string, or an integer written as one (some translations store numbers).
fn id_of(field: &Field) -> Option<String> {
    match field {
        Field::Str(text) => Some(text.clone()),
        Field::Int(v) => Some(v.to_string()),
        Field::Long(v) => Some(v.to_string()),
        Field::UInt(v) => Some(v.to_string()),
        Field::ULong(v) => Some(v.to_string()),
        _ => None,
    }
}

/// A column's value as an id, or a list of ids (`qrels.corpus-id` may be either).
fn ids_of(field: &Field) -> Option<Vec<String>> {
    match field {
        Field::ListInternal(list) => list.elements().iter().map(id_of).collect(),
        other => id_of(other).map(|id| vec![id]),
    }
}

fn column<'a>(
    (path, row, columns): &'a (PathBuf, usize, Row),
    name: &str,
) -> Result<&'a Field, NanoBeirError> {
    columns.get(name).ok_or_else(|| NanoBeirError::Row {
        path: path.clone(),
        row: *row,
        message: format!(
            "no column {name:?} (has {})",
            columns.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    })
}

fn wrong_type(entry: &(PathBuf, usize, Row), name: &str, expected: &str) -> NanoBeirError {
    NanoBeirError::Row {
        path: entry.0.clone(),
        row: entry.1,
        message: format!("column {name:?} is not {expected}"),
    }
}

/// `_id` → `text` of the `corpus` or `queries` subset.
fn texts_by_id(
    dir: &Path,
    subset: &str,
    split: &str,
) -> Result<HashMap<String, String>, NanoBeirError> {
    let mut texts = HashMap::new();
    for entry in read_rows(dir, subset, split)? {
        let id = id_of(column(&entry, "_id")?).ok_or_else(|| wrong_type(&entry, "_id", "an id"))?;
        let text = match column(&entry, "text")? {
            Field::Str(text) => text.clone(),
            _ => return Err(wrong_type(&entry, "text", "a string")),
        };
        texts.insert(id, text);
    }
    Ok(texts)
}

/// The reranking samples of one NanoBEIR dataset (`short`, e.g. `msmarco`) in `dir`: one per
/// BM25 row, in the file's order, with the qrels' positives (each id once, in qrels order) and
/// the first `rerank_k` BM25 documents. A query id the `queries` or `qrels` subset lacks, or a
/// document id the corpus lacks, is an error naming the file and row (the reference raises
/// a `KeyError` there).
pub fn read_nanobeir(
    dir: &Path,
    short: &str,
    rerank_k: usize,
) -> Result<Vec<RerankingSample>, NanoBeirError> {
    let split = split_name(short)?;
    let corpus = texts_by_id(dir, "corpus", &split)?;
    let queries = texts_by_id(dir, "queries", &split)?;
    let mut positives: HashMap<String, Vec<String>> = HashMap::new();
    for entry in read_rows(dir, "qrels", &split)? {
        let query = id_of(column(&entry, "query-id")?)
            .ok_or_else(|| wrong_type(&entry, "query-id", "an id"))?;
        let documents = ids_of(column(&entry, "corpus-id")?)
            .ok_or_else(|| wrong_type(&entry, "corpus-id", "an id or a list of ids"))?;
        let known = positives.entry(query).or_default();
        for document in documents {
            if !known.contains(&document) {
                known.push(document);
            }
        }
    }
    let mut samples = Vec::new();
    for entry in read_rows(dir, "bm25", &split)? {
        let unknown = |what: &str, id: &str| NanoBeirError::Row {
            path: entry.0.clone(),
            row: entry.1,
            message: format!("{what} {id:?} is not in the {split} split"),
        };
        let query_id = id_of(column(&entry, "query-id")?)
            .ok_or_else(|| wrong_type(&entry, "query-id", "an id"))?;
        let ranked = match column(&entry, "corpus-ids")? {
            Field::ListInternal(_) => ids_of(column(&entry, "corpus-ids")?),
            _ => None,
        }
        .ok_or_else(|| wrong_type(&entry, "corpus-ids", "a list of ids"))?;
        let query = queries
            .get(&query_id)
            .ok_or_else(|| unknown("query-id (of the queries subset)", &query_id))?;
        let positive_ids = positives
            .get(&query_id)
            .ok_or_else(|| unknown("query-id (of the qrels subset)", &query_id))?;
        let text_of = |id: &String| {
            corpus
                .get(id)
                .cloned()
                .ok_or_else(|| unknown("corpus id (of the corpus subset)", id))
        };
        samples.push(RerankingSample {
            query: query.clone(),
            positive: positive_ids.iter().map(text_of).collect::<Result<_, _>>()?,
            negative: None,
            documents: Some(
                ranked
                    .iter()
                    .take(rerank_k)
                    .map(text_of)
                    .collect::<Result<_, _>>()?,
            ),
        });
    }
    Ok(samples)
}

/// NanoBEIR's datasets (`names`, short) read from `dataset_id` (a local directory, or the hub
/// dataset, downloaded once into the hub cache): `(split, samples)` each.
pub fn load_nanobeir(
    dataset_id: &str,
    names: &[String],
    rerank_k: usize,
) -> Result<Vec<(String, Vec<RerankingSample>)>, NanoBeirError> {
    let splits = names
        .iter()
        .map(|name| split_name(name))
        .collect::<Result<Vec<_>, _>>()?;
    let dir = resolve_dataset_dir(dataset_id, &splits)?;
    names
        .iter()
        .zip(splits)
        .map(|(name, split)| Ok((split, read_nanobeir(&dir, name, rerank_k)?)))
        .collect()
}

/// One dataset's four subsets, to write in the hub's layout.
#[derive(Debug, Clone, Default)]
pub struct NanoBeirSplit {
    /// `(_id, text)` of every document.
    pub corpus: Vec<(String, String)>,
    /// `(_id, text)` of every query.
    pub queries: Vec<(String, String)>,
    /// `(query-id, corpus-id)` of every relevant document.
    pub qrels: Vec<(String, String)>,
    /// `(query-id, corpus-ids)`: each query's first-stage ranking, best first.
    pub bm25: Vec<(String, Vec<String>)>,
}

/// Writes `split` (`Nano{Name}`) of a dataset into `dir` in the hub's layout
/// (`{subset}/{split}-00000-of-00001.parquet`) and rewrites `dir/README.md`'s `configs`
/// for every split present, so that Hugging Face `datasets.load_dataset(dir, subset,
/// split=...)` (and so the reference's evaluator) reads the same directory. For tests, and
/// for evaluating on one's own qrels and first-stage rankings.
pub fn write_nanobeir_split(
    dir: &Path,
    split: &str,
    data: &NanoBeirSplit,
) -> Result<(), NanoBeirError> {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let pairs = |a: &str, b: &str| {
        format!(
            "message schema {{ REQUIRED BYTE_ARRAY {a} (UTF8); REQUIRED BYTE_ARRAY {b} (UTF8); }}"
        )
    };
    let list = "message schema { REQUIRED BYTE_ARRAY query-id (UTF8); REQUIRED group corpus-ids \
                (LIST) { REPEATED group list { REQUIRED BYTE_ARRAY element (UTF8); } } }";
    let bytes = |values: &mut dyn Iterator<Item = &str>| -> Vec<ByteArray> {
        values.map(ByteArray::from).collect()
    };
    let ranked: Vec<&str> = data
        .bm25
        .iter()
        .flat_map(|(_, ids)| ids.iter().map(String::as_str))
        .collect();
    let repetition: Vec<i16> = data
        .bm25
        .iter()
        .flat_map(|(_, ids)| (0..ids.len()).map(|i| i16::from(i > 0)))
        .collect();
    // (subset, schema, columns: values, definition levels, repetition levels)
    type Column = (Vec<ByteArray>, Option<Vec<i16>>, Option<Vec<i16>>);
    let subsets: [(&str, String, Vec<Column>); 4] = [
        (
            "corpus",
            pairs("_id", "text"),
            vec![
                (
                    bytes(&mut data.corpus.iter().map(|(i, _)| i.as_str())),
                    None,
                    None,
                ),
                (
                    bytes(&mut data.corpus.iter().map(|(_, t)| t.as_str())),
                    None,
                    None,
                ),
            ],
        ),
        (
            "queries",
            pairs("_id", "text"),
            vec![
                (
                    bytes(&mut data.queries.iter().map(|(i, _)| i.as_str())),
                    None,
                    None,
                ),
                (
                    bytes(&mut data.queries.iter().map(|(_, t)| t.as_str())),
                    None,
                    None,
                ),
            ],
        ),
        (
            "qrels",
            pairs("query-id", "corpus-id"),
            vec![
                (
                    bytes(&mut data.qrels.iter().map(|(q, _)| q.as_str())),
                    None,
                    None,
                ),
                (
                    bytes(&mut data.qrels.iter().map(|(_, c)| c.as_str())),
                    None,
                    None,
                ),
            ],
        ),
        (
            "bm25",
            list.to_string(),
            vec![
                (
                    bytes(&mut data.bm25.iter().map(|(q, _)| q.as_str())),
                    None,
                    None,
                ),
                (
                    bytes(&mut ranked.iter().copied()),
                    Some(vec![1; ranked.len()]),
                    Some(repetition),
                ),
            ],
        ),
    ];
    for (subset, schema, columns) in subsets {
        let folder = dir.join(subset);
        let path = folder.join(format!("{split}-00000-of-00001.parquet"));
        let write_error = |message: String| NanoBeirError::Parquet {
            path: path.clone(),
            message,
        };
        std::fs::create_dir_all(&folder).map_err(|e| write_error(e.to_string()))?;
        let schema = Arc::new(
            parquet::schema::parser::parse_message_type(&schema)
                .map_err(|e| write_error(e.to_string()))?,
        );
        let file = std::fs::File::create(&path).map_err(|e| write_error(e.to_string()))?;
        let properties = Arc::new(WriterProperties::builder().build());
        let mut writer = SerializedFileWriter::new(file, schema, properties)
            .map_err(|e| write_error(e.to_string()))?;
        let mut group = writer
            .next_row_group()
            .map_err(|e| write_error(e.to_string()))?;
        for (values, definition, repetition) in &columns {
            let mut column = group
                .next_column()
                .map_err(|e| write_error(e.to_string()))?
                .ok_or_else(|| write_error("the schema has fewer columns".into()))?;
            column
                .typed::<ByteArrayType>()
                .write_batch(values, definition.as_deref(), repetition.as_deref())
                .map_err(|e| write_error(e.to_string()))?;
            column.close().map_err(|e| write_error(e.to_string()))?;
        }
        group.close().map_err(|e| write_error(e.to_string()))?;
        writer.close().map_err(|e| write_error(e.to_string()))?;
    }
    write_readme(dir)
}

/// `README.md` with the `configs` the hub's dataset cards carry: per subset, each split's
/// files, for every split found in `dir`.
fn write_readme(dir: &Path) -> Result<(), NanoBeirError> {
    let mut card = String::from("---\nconfigs:\n");
    for subset in SUBSETS {
        let mut splits: Vec<String> = std::fs::read_dir(dir.join(subset))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                name.strip_suffix("-00000-of-00001.parquet")
                    .map(str::to_string)
            })
            .collect();
        splits.sort();
        card.push_str(&format!("- config_name: {subset}\n  data_files:\n"));
        for split in splits {
            card.push_str(&format!(
                "  - split: {split}\n    path: {subset}/{split}-*\n"
            ));
        }
    }
    card.push_str("---\n");
    let path = dir.join("README.md");
    std::fs::write(&path, card).map_err(|e| NanoBeirError::Parquet {
        path,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn written_layout_reads_back_as_the_references_samples() {
        let dir = tempfile::tempdir().unwrap();
        let data = NanoBeirSplit {
            corpus: (0..5)
                .map(|i| (format!("d{i}"), format!("document {i}")))
                .collect(),
            queries: vec![
                ("q1".into(), "first".into()),
                ("q2".into(), "second".into()),
            ],
            qrels: vec![
                ("q1".into(), "d4".into()),
                ("q1".into(), "d0".into()),
                ("q1".into(), "d4".into()),
                ("q2".into(), "d1".into()),
            ],
            bm25: vec![
                ("q2".into(), ids(&["d1", "d2", "d3"])),
                ("q1".into(), ids(&["d0", "d1", "d2", "d3"])),
            ],
        };
        write_nanobeir_split(dir.path(), "NanoNQ", &data).unwrap();
        let readme = std::fs::read_to_string(dir.path().join("README.md")).unwrap();
        assert!(
            readme.contains("- split: NanoNQ\n    path: bm25/NanoNQ-*"),
            "{readme}"
        );
        let samples = read_nanobeir(dir.path(), "NQ", 2).unwrap();
        assert_eq!(samples.len(), 2);
        // BM25's order of queries; positives once each, in qrels order; the top rerank_k.
        assert_eq!(samples[0].query, "second");
        assert_eq!(samples[1].positive, ids(&["document 4", "document 0"]));
        assert_eq!(
            samples[1].documents.as_deref(),
            Some(&ids(&["document 0", "document 1"])[..])
        );
        let error = read_nanobeir(dir.path(), "msmarco", 2)
            .unwrap_err()
            .to_string();
        assert!(error.contains("corpus/NanoMSMARCO-*.parquet"), "{error}");
        let error = split_name("touche").unwrap_err().to_string();
        assert!(
            error.contains("\"touche\" is not a NanoBEIR dataset"),
            "{error}"
        );
        // An id the corpus lacks names its file and row.
        let mut broken = data.clone();
        broken.bm25[1].1.push("d9".into());
        write_nanobeir_split(dir.path(), "NanoNQ", &broken).unwrap();
        let error = read_nanobeir(dir.path(), "nq", 10).unwrap_err().to_string();
        assert!(
            error.contains("bm25/NanoNQ-00000-of-00001.parquet: row 2") && error.contains("\"d9\""),
            "{error}"
        );
    }
}
