//! Reading data files. Every error names the file, the line and the field.

pub mod dataset;
pub mod eval_sets;
pub mod pairs;

/// Deserializes one value or a list of them into a list (`files = "a.jsonl"` or
/// `files = ["a.jsonl", "b.jsonl"]`; `"positive": "doc"` or `"positive": ["doc", ...]`).
pub fn one_or_many<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(
        match <OneOrMany<T> as serde::Deserialize>::deserialize(deserializer)? {
            OneOrMany::One(value) => vec![value],
            OneOrMany::Many(values) => values,
        },
    )
}
