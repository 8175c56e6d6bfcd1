//! crosstrain's own citation, and the one every sentence-transformers model card carries.

/// How to cite crosstrain.
pub const CROSSTRAIN_CITATION: &str = r#"@software{crosstrain,
    title = {crosstrain: cross-encoder reranker training in Rust},
    author = {{The crosstrain developers}},
    year = {2026},
    note = {Version 0.1.0}
}"#;

/// Sentence-BERT, cited by every sentence-transformers cross-encoder card; the losses we
/// implement come from that library.
pub const SENTENCE_BERT_CITATION: &str = r#"@inproceedings{reimers-2019-sentence-bert,
    title = "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    author = "Reimers, Nils and Gurevych, Iryna",
    booktitle = "Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing",
    month = "11",
    year = "2019",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/1908.10084",
}"#;
