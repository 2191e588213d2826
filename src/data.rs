//! Evaluation and calibration text: plain text files, or JSONL with a `text`
//! field per line (documents joined with the tokenizer's EOS token).

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::Tokenizer;

/// Documents of a data file.
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    crate::fsutil::check_input_file(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::data(
            path,
            format!(
                "not UTF-8 text (invalid byte at offset {}); give a plain text or JSONL file",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    let is_jsonl = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    if !is_jsonl {
        return Ok(vec![text]);
    }
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::data(path, format!("line {}: not valid JSON: {e}", i + 1)))?;
        let t = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
            Error::data(
                path,
                format!(
                    "line {}: expected an object with a string field `text`",
                    i + 1
                ),
            )
        })?;
        docs.push(t.to_string());
    }
    Ok(docs)
}

/// Tokens of a data file: each document tokenized without special tokens, EOS
/// between documents.
pub fn load_tokens(path: &Path, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let docs = read_documents(path)?;
    let mut tokens = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            match tokenizer.eos_id() {
                Some(eos) => tokens.push(eos),
                None => {
                    return Err(Error::data(
                        path,
                        "the tokenizer has no end-of-sequence token to join JSONL documents with",
                    ));
                }
            }
        }
        tokens.extend(tokenizer.encode(doc)?);
    }
    if tokens.is_empty() {
        return Err(Error::data(path, "no text to evaluate (the file is empty)"));
    }
    Ok(tokens)
}
