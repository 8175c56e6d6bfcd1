use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The error of reading `text` as the file `name` with default settings.
fn read_error(name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), name, text);
    read_dataset(&DatasetSpec::from_files(vec![path]))
        .unwrap_err()
        .to_string()
}

#[test]
fn jsonl_columns_in_order_with_label_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "train.jsonl",
        "{\"score\": 0.5, \"query\": \"q1\", \"document\": \"d1\"}\n\n\
         {\"score\": 1, \"query\": \"q2\", \"document\": \"d2\"}\n",
    );
    let dataset = read_dataset(&DatasetSpec::from_files(vec![path])).unwrap();
    assert_eq!(dataset.len(), 2);
    assert_eq!(dataset.columns[0].name, "query");
    assert_eq!(dataset.columns[1].name, "document");
    assert_eq!(
        dataset.label.as_ref().unwrap().values,
        LabelValues::Scalars(vec![0.5, 1.0])
    );
}

#[test]
fn malformed_row_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "train.jsonl",
        "{\"query\": \"q1\", \"document\": \"d1\", \"label\": 1}\n\
         {\"query\": \"q2\", \"document\": 7, \"label\": 0}\n\
         {\"query\": \"q3\", \"document\": \"d3\", \"label\": 0}\n",
    );
    let error = read_dataset(&DatasetSpec::from_files(vec![path.clone()]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("train.jsonl:line 2"), "{error}");
    assert!(error.contains("\"document\""), "{error}");
    assert!(error.contains("got a number"), "{error}");

    let mut spec = DatasetSpec::from_files(vec![path]);
    spec.skip_invalid_rows = true;
    let dataset = read_dataset(&spec).unwrap();
    assert_eq!(dataset.len(), 2);
    assert_eq!(dataset.skipped_rows, 1);
}

#[test]
fn unknown_column_is_named() {
    let error = read_error(
        "train.jsonl",
        "{\"query\": \"q1\", \"document\": \"d1\"}\n{\"query\": \"q2\", \"doc\": \"d2\"}\n",
    );
    assert!(error.contains("line 2"), "{error}");
    assert!(error.contains("\"document\""), "{error}");
}

#[test]
fn headerless_tsv_with_selection_rename_and_scale() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "sts.csv",
        "g\tx\t5.000\tA \"plane\" flies.\tA plane flies.\r\n\
         g\tx\t2.500\tA man.\tA woman.\textra\tfields\r\n",
    );
    let mut spec = DatasetSpec::from_files(vec![path]);
    spec.format = Some(FileFormat::Tsv);
    spec.header = false;
    spec.quoting = false;
    spec.ignore_extra_fields = true;
    spec.column_names = Some(
        ["genre", "file", "score", "sentence1", "sentence2"]
            .map(String::from)
            .to_vec(),
    );
    spec.columns = Some(
        ["sentence1", "sentence2", "label"]
            .map(String::from)
            .to_vec(),
    );
    spec.rename.insert("score".into(), "label".into());
    spec.label_scale = 0.2;
    let dataset = read_dataset(&spec).unwrap();
    assert_eq!(dataset.len(), 2);
    assert_eq!(dataset.columns[0].text(0, 0), Some("A \"plane\" flies."));
    assert_eq!(dataset.columns[1].text(1, 0), Some("A woman."));
    assert_eq!(
        dataset.label.unwrap().values,
        LabelValues::Scalars(vec![1.0, 0.5])
    );
}

#[test]
fn csv_bad_label_is_reported() {
    let error = read_error("train.csv", "query,document,label\nq,d,1\nq,d,yes\n");
    assert!(error.contains("train.csv:line 3"), "{error}");
    assert!(error.contains("column \"label\""), "{error}");
}

#[test]
fn listwise_rows_and_format_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "lists.jsonl",
        "{\"query\": \"q\", \"docs\": [\"a\", \"b\"], \"labels\": [1, 0]}\n\
         {\"query\": \"r\", \"docs\": [\"c\"], \"labels\": [0.5]}\n",
    );
    let dataset = read_dataset(&DatasetSpec::from_files(vec![path])).unwrap();
    let shape = dataset.batch_shape(&[1, 0]);
    assert_eq!(shape.columns[1].list_lengths(), Some(&[1u32, 2][..]));
    let labels = dataset.batch_labels(&[1, 0]);
    assert_eq!(labels.row(1), &[1.0, 0.0]);
    assert_eq!(
        dataset.text(&[1, 0], TextRef::list_item(1, 1, 1)),
        Some("b")
    );
    let listwise = [DataFormat::query_documents_scores()];
    assert!(dataset.check_format("ListNetLoss", &listwise, 1, 1).is_ok());
    let pointwise = [DataFormat::pair_binary_label()];
    let error = dataset
        .check_format("BinaryCrossEntropyLoss", &pointwise, 0, 1)
        .unwrap_err()
        .to_string();
    assert!(error.contains("BinaryCrossEntropyLoss accepts"), "{error}");
    assert!(error.contains("docs (list of documents)"), "{error}");
}

/// A Parquet file as Hugging Face datasets write them: a string column, a list of
/// strings and a list of doubles.
fn write_parquet(path: &Path) {
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message schema {
                REQUIRED BYTE_ARRAY query (UTF8);
                REQUIRED group documents (LIST) {
                    REPEATED group list { REQUIRED BYTE_ARRAY element (UTF8); }
                }
                REQUIRED group labels (LIST) {
                    REPEATED group list { REQUIRED DOUBLE element; }
                }
            }",
        )
        .unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let properties = Arc::new(WriterProperties::builder().build());
    let mut writer = SerializedFileWriter::new(file, schema, properties).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let texts = |values: &[&str]| -> Vec<ByteArray> {
        values.iter().map(|v| ByteArray::from(*v)).collect()
    };
    let mut index = 0;
    while let Some(mut column) = group.next_column().unwrap() {
        match index {
            0 => {
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&texts(&["q1", "q2"]), None, None)
                    .unwrap();
            }
            1 => {
                // Rows [a, b] and [c]: definition 1 per item, repetition 0 at a row start.
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&texts(&["a", "b", "c"]), Some(&[1, 1, 1]), Some(&[0, 1, 0]))
                    .unwrap();
            }
            _ => {
                column
                    .typed::<DoubleType>()
                    .write_batch(&[1.0, 0.0, 0.5], Some(&[1, 1, 1]), Some(&[0, 1, 0]))
                    .unwrap();
            }
        }
        column.close().unwrap();
        index += 1;
    }
    group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn parquet_lists_become_document_lists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.parquet");
    write_parquet(&path);
    let dataset = read_dataset(&DatasetSpec::from_files(vec![path])).unwrap();
    assert_eq!(dataset.len(), 2);
    assert_eq!(dataset.columns[0].name, "query");
    assert_eq!(
        dataset.columns[1].values,
        TextValues::Lists(vec![vec!["a".into(), "b".into()], vec!["c".into()]])
    );
    assert_eq!(
        dataset.label.as_ref().unwrap().values,
        LabelValues::Lists(vec![vec![1.0, 0.0], vec![0.5]])
    );
    assert!(dataset
        .check_format("ListNetLoss", &[DataFormat::query_documents_scores()], 1, 1)
        .is_ok());
}

#[test]
fn binary_label_out_of_range_names_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "train.jsonl",
        "{\"q\": \"a\", \"d\": \"b\", \"label\": 1}\n{\"q\": \"a\", \"d\": \"b\", \"label\": 4}\n",
    );
    let dataset = read_dataset(&DatasetSpec::from_files(vec![path])).unwrap();
    let error = dataset
        .check_format(
            "BinaryCrossEntropyLoss",
            &[DataFormat::pair_binary_label()],
            0,
            1,
        )
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("train.jsonl:line 2: label = 4 is not in [0, 1]"),
        "{error}"
    );

    // Issue 19, class 6: in the second of two files, after a blank line, the error names
    // that file and its own line (not the first file and a row counted across both).
    let first = write(
        dir.path(),
        "first.jsonl",
        "{\"q\": \"a\", \"d\": \"b\", \"label\": 1}\n{\"q\": \"a\", \"d\": \"c\", \"label\": 0}\n",
    );
    let second = write(
        dir.path(),
        "second.jsonl",
        "{\"q\": \"a\", \"d\": \"b\", \"label\": 1}\n\n{\"q\": \"a\", \"d\": \"b\", \"label\": 7}\n",
    );
    let dataset = read_dataset(&DatasetSpec::from_files(vec![first, second])).unwrap();
    let error = dataset
        .check_format(
            "BinaryCrossEntropyLoss",
            &[DataFormat::pair_binary_label()],
            0,
            1,
        )
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("second.jsonl:line 3: label = 7 is not in [0, 1]"),
        "{error}"
    );
}
