//! Reading data files. Every error names the file, the line and the field.

pub mod dataset;
pub mod eval_sets;
pub mod nanobeir;
pub mod pairs;

/// The UTF-8 byte-order mark some editors (and Excel) put at the start of a text file.
const BYTE_ORDER_MARK: char = '\u{feff}';

/// A text file's contents without a leading byte-order mark. Invalid UTF-8 is an error that
/// says on which line (1-based) and at which byte of it, not just "stream did not contain
/// valid UTF-8".
pub fn read_text(path: &std::path::Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(match text.strip_prefix(BYTE_ORDER_MARK) {
            Some(rest) => rest.to_string(),
            None => text,
        }),
        Err(error) => {
            let bad = error.utf8_error().valid_up_to();
            let before = &error.as_bytes()[..bad];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |newline| newline + 1);
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "invalid UTF-8 on line {line} (byte {} of the line)",
                    bad - line_start + 1
                ),
            ))
        }
    }
}

/// `line` without a byte-order mark if it is a file's first line (for streamed readers).
pub fn strip_byte_order_mark(line: &str, first: bool) -> &str {
    if first {
        line.strip_prefix(BYTE_ORDER_MARK).unwrap_or(line)
    } else {
        line
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_marks_are_stripped_and_bad_utf8_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, "\u{feff}{\"a\": 1}\n").unwrap();
        assert_eq!(read_text(&path).unwrap(), "{\"a\": 1}\n");
        std::fs::write(&path, b"ok\nfine\nab\xffcd\n").unwrap();
        let error = read_text(&path).unwrap_err().to_string();
        assert_eq!(error, "invalid UTF-8 on line 3 (byte 3 of the line)");
        assert_eq!(strip_byte_order_mark("\u{feff}x", true), "x");
        assert_eq!(strip_byte_order_mark("\u{feff}x", false), "\u{feff}x");
    }
}
