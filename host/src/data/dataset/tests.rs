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
    assert!(dataset
        .check_format("training data", "ListNetLoss", &listwise, 1, 1)
        .is_ok());
    let pointwise = [DataFormat::pair_binary_label()];
    let error = dataset
        .check_format("training data", "BinaryCrossEntropyLoss", &pointwise, 0, 1)
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
        TextValues::Lists(vec![vec!["a".into(), "b".into()], vec!["c".into()]].into())
    );
    assert_eq!(
        dataset.label.as_ref().unwrap().values,
        LabelValues::Lists(vec![vec![1.0, 0.0], vec![0.5]])
    );
    assert!(dataset
        .check_format(
            "training data",
            "ListNetLoss",
            &[DataFormat::query_documents_scores()],
            1,
            1
        )
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
            "training data",
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
            "training data",
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

/// Everything of a dataset but where it is kept: texts, labels, row origins, skipped rows.
fn assert_same_rows(disk: &Dataset, memory: &Dataset) {
    assert_eq!(disk.files, memory.files);
    assert_eq!(disk.columns, memory.columns);
    assert_eq!(disk.label, memory.label);
    assert_eq!(disk.skipped_rows, memory.skipped_rows);
    assert_eq!(disk.len(), memory.len());
    for row in 0..memory.len() {
        assert_eq!(disk.row_location(row), memory.row_location(row));
    }
}

fn with_storage(files: Vec<PathBuf>, storage: Storage) -> DatasetSpec {
    let mut spec = DatasetSpec::from_files(files);
    spec.storage = storage;
    spec
}

#[test]
fn disk_storage_reads_the_same_rows_as_memory_in_several_record_batches() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // Two files, a blank line, a bad row skipped, a list column and list labels: eight rows
    // make three record batches of at most three rows (`CHUNK_ROWS` in unit tests).
    let first = write(
        dir.path(),
        "lists.jsonl",
        "{\"query\": \"q1\", \"docs\": [\"a\", \"b\"], \"labels\": [1, 0]}\n\n\
         {\"query\": \"q2\", \"docs\": [\"c\"], \"labels\": [0.5]}\n\
         {\"query\": \"q3\", \"docs\": 5, \"labels\": [1]}\n\
         {\"query\": \"q4 \u{e9}\u{4e2d}\", \"docs\": [\"d\", \"e\", \"f\"], \"labels\": [1, 0, 0]}\n\
         {\"query\": \"q5\", \"docs\": [], \"labels\": []}\n",
    );
    let second = write(
        dir.path(),
        "more.jsonl",
        "{\"query\": \"q6\", \"docs\": [\"g\"], \"labels\": [1]}\n\
         {\"query\": \"q7\", \"docs\": [\"h\", \"i\"], \"labels\": [0, 1]}\n\
         {\"query\": \"q8\", \"docs\": [\"j\"], \"labels\": [0]}\n\
         {\"query\": \"q9\", \"docs\": [\"k\"], \"labels\": [1]}\n",
    );
    let mut memory_spec = with_storage(vec![first.clone(), second.clone()], Storage::Memory);
    memory_spec.skip_invalid_rows = true;
    let mut disk_spec = memory_spec.clone();
    disk_spec.storage = Storage::Disk;
    let memory = read_dataset_cached_in(&memory_spec, &cache).unwrap();
    assert_eq!(memory.cache, None);
    let disk = read_dataset_cached_in(&disk_spec, &cache).unwrap();
    assert_eq!(disk.len(), 8);
    assert_eq!(disk.skipped_rows, 1);
    assert_same_rows(&disk, &memory);
    assert_eq!(disk.row_location(5), format!("{}:line 2", second.display()));
    assert_eq!(
        disk.text(&[2], TextRef::cell(0, 0)),
        Some("q4 \u{e9}\u{4e2d}")
    );
    assert_eq!(disk.batch_shape(&[2, 3]), memory.batch_shape(&[2, 3]));
    let cache_file = disk.cache.clone().unwrap();
    assert!(cache_file.starts_with(&cache), "{}", cache_file.display());
    // Nothing but the entry and its checksum is left in the cache folder.
    let mut entries: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let entry_name = cache_file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(entries, [entry_name.clone(), format!("{entry_name}.xxh3")]);

    // Read again: the same entry, not rewritten.
    let written = std::fs::metadata(&cache_file).unwrap().modified().unwrap();
    let again = read_dataset_cached_in(&disk_spec, &cache).unwrap();
    assert_eq!(again.cache.as_ref(), Some(&cache_file));
    assert_eq!(
        std::fs::metadata(&cache_file).unwrap().modified().unwrap(),
        written
    );
    assert_same_rows(&again, &memory);

    // Another option (a limit) is another entry; so is a changed file.
    let mut limited = disk_spec.clone();
    limited.limit = Some(2);
    let limited = read_dataset_cached_in(&limited, &cache).unwrap();
    assert_eq!(limited.len(), 2);
    assert_ne!(limited.cache.as_ref(), Some(&cache_file));
    std::fs::write(
        &second,
        std::fs::read_to_string(&second).unwrap()
            + "{\"query\": \"q10\", \"docs\": [\"l\"], \"labels\": [1]}\n",
    )
    .unwrap();
    let changed = read_dataset_cached_in(&disk_spec, &cache).unwrap();
    assert_eq!(changed.len(), 9);
    assert_eq!(changed.text(&[8], TextRef::cell(0, 0)), Some("q10"));
    assert_ne!(changed.cache.as_ref(), Some(&cache_file));
}

#[test]
fn disk_storage_of_csv_and_parquet_matches_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let csv = write(
        dir.path(),
        "pairs.csv",
        "\u{feff}query,document,score\r\nq1,\"d, one\",0.5\r\n\r\nq2,\"two\nlines\",1\r\nq3,d3,0\r\nq4,d4,1\r\n",
    );
    let parquet = dir.path().join("pairs.parquet");
    write_parquet(&parquet);
    for files in [vec![csv], vec![parquet]] {
        let memory =
            read_dataset_cached_in(&with_storage(files.clone(), Storage::Memory), &cache).unwrap();
        let disk = read_dataset_cached_in(&with_storage(files, Storage::Disk), &cache).unwrap();
        assert!(disk.cache.is_some());
        assert_same_rows(&disk, &memory);
    }
}

#[test]
fn disk_storage_errors_name_the_row_and_leave_no_entry() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let path = write(
        dir.path(),
        "train.jsonl",
        "{\"query\": \"q1\", \"document\": \"d1\", \"label\": 1}\n\
         {\"query\": \"q2\", \"document\": \"d2\", \"label\": 0}\n\
         {\"query\": \"q3\", \"document\": \"d3\", \"label\": 1}\n\
         {\"query\": \"q4\", \"document\": \"d4\", \"label\": 0}\n\
         {\"query\": \"q5\", \"document\": 7, \"label\": 0}\n",
    );
    let memory = read_dataset_cached_in(&with_storage(vec![path.clone()], Storage::Memory), &cache)
        .unwrap_err()
        .to_string();
    let disk = read_dataset_cached_in(&with_storage(vec![path.clone()], Storage::Disk), &cache)
        .unwrap_err()
        .to_string();
    assert_eq!(disk, memory);
    assert!(
        disk.contains("train.jsonl:line 5: column \"document\""),
        "{disk}"
    );
    // A chunk was written before the bad row; its partial file is gone.
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);

    // Invalid UTF-8 ends the file whatever `skip_invalid_rows` says, as in memory.
    std::fs::write(
        &path,
        b"{\"query\": \"q1\", \"document\": \"d\xff\", \"label\": 1}\n",
    )
    .unwrap();
    let mut spec = with_storage(vec![path], Storage::Disk);
    spec.skip_invalid_rows = true;
    let error = read_dataset_cached_in(&spec, &cache)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("invalid UTF-8 on line 1 (byte 31 of the line)"),
        "{error}"
    );
}

#[test]
fn a_damaged_cache_entry_is_converted_again() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let path = write(
        dir.path(),
        "train.jsonl",
        "{\"query\": \"q1\", \"document\": \"d1\", \"label\": 1}\n\
         {\"query\": \"q2\", \"document\": \"d2\", \"label\": 0}\n",
    );
    let spec = with_storage(vec![path], Storage::Disk);
    let first = read_dataset_cached_in(&spec, &cache).unwrap();
    let entry = first.cache.clone().unwrap();
    drop(first);
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..bytes.len() / 2]).unwrap();
    // A conversion killed mid-write left its partial file; the next conversion removes it.
    let name = entry.file_name().unwrap().to_string_lossy().into_owned();
    let stale = cache.join(format!(".{name}.partial-4294967295"));
    std::fs::write(&stale, b"half").unwrap();
    let again = read_dataset_cached_in(&spec, &cache).unwrap();
    assert!(!stale.exists());
    assert_eq!(again.len(), 2);
    assert_eq!(again.text(&[1], TextRef::cell(1, 0)), Some("d2"));
    assert_eq!(std::fs::read(&entry).unwrap(), bytes);
}

#[test]
fn auto_storage_keeps_small_files_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "a.jsonl",
        "{\"query\": \"q\", \"document\": \"d\"}\n",
    );
    let dataset = read_dataset_cached_in(
        &with_storage(vec![path], Storage::Auto),
        &dir.path().join("cache"),
    )
    .unwrap();
    assert_eq!(dataset.cache, None);
    assert!(!dir.path().join("cache").exists());
}

/// Issue 31, item 13: a damaged cache entry (one flipped byte in a text) is not read: its
/// checksum no longer matches, so the files are converted again and the rows are the file's.
#[test]
fn a_damaged_cache_entry_is_converted_again_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let path = write(
        dir.path(),
        "train.jsonl",
        "{\"query\": \"which zebra\", \"document\": \"the striped one\", \"label\": 1}\n\
         {\"query\": \"which horse\", \"document\": \"the brown one\", \"label\": 0}\n",
    );
    let spec = with_storage(vec![path], Storage::Disk);
    let first = read_dataset_cached_in(&spec, &cache).unwrap();
    let entry = first.cache.clone().unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let at = bytes
        .windows(b"striped".len())
        .position(|w| w == b"striped")
        .expect("the text is in the entry");
    bytes[at] ^= 0x01; // "striped" becomes "rtriped"
    std::fs::write(&entry, &bytes).unwrap();
    let again = read_dataset_cached_in(&spec, &cache).unwrap();
    assert_eq!(
        again.text(&[0], TextRef::cell(1, 0)),
        Some("the striped one")
    );
    // (`first` maps the entry that was damaged in place, so the file is the reference.)
    let memory =
        read_dataset_cached_in(&with_storage(spec.files.clone(), Storage::Memory), &cache).unwrap();
    assert_same_rows(&again, &memory);
    // The entry was written anew, with a checksum that holds again.
    let third = read_dataset_cached_in(&spec, &cache).unwrap();
    assert_eq!(
        third.text(&[0], TextRef::cell(1, 0)),
        Some("the striped one")
    );

    // An entry whose checksum file is gone is not trusted either.
    std::fs::write(&entry, &bytes).unwrap();
    let mut checksum = entry.as_os_str().to_os_string();
    checksum.push(".xxh3");
    std::fs::remove_file(&checksum).unwrap();
    let fourth = read_dataset_cached_in(&spec, &cache).unwrap();
    assert_eq!(
        fourth.text(&[0], TextRef::cell(1, 0)),
        Some("the striped one")
    );
}

/// Issue 31, items 8 and 10: `limit = 0` (which trained on one row) and a `rename` that
/// leaves two columns of one name are errors naming the file and the setting.
#[test]
fn a_zero_limit_and_colliding_renames_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "train.jsonl",
        "{\"query\": \"q1\", \"document\": \"d1\", \"passage\": \"p1\", \"label\": 1}\n",
    );
    let mut spec = DatasetSpec::from_files(vec![path.clone()]);
    spec.limit = Some(0);
    let error = read_dataset(&spec).unwrap_err().to_string();
    assert!(
        error.contains("train.jsonl") && error.contains("limit = 0"),
        "{error}"
    );
    spec.limit = Some(1);
    assert_eq!(read_dataset(&spec).unwrap().len(), 1);

    // Two columns renamed to one name.
    let mut spec = DatasetSpec::from_files(vec![path.clone()]);
    spec.rename = [("document", "text"), ("passage", "text")]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let error = read_dataset(&spec).unwrap_err().to_string();
    assert!(
        error.contains("\"text\"") && error.contains("rename"),
        "{error}"
    );
    // A rename onto a column the file already has.
    let mut spec = DatasetSpec::from_files(vec![path]);
    spec.rename = [("passage".to_string(), "document".to_string())]
        .into_iter()
        .collect();
    let error = read_dataset(&spec).unwrap_err().to_string();
    assert!(
        error.contains("train.jsonl:line 1") && error.contains("\"document\""),
        "{error}"
    );
}
