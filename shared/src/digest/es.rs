//! Digests of Elasticsearch documents. An ES target holds what the ES encoder
//! (`sink/elasticsearch/encoder.rs`) made of each source row, so both sides are compared as documents: the
//! source row is encoded by the sink's own encoder (its `exclude`, its value mapping), the target's
//! `_source` is fetched, and each side's document is hashed as canonical JSON (sorted keys, no spacing,
//! numbers by value) behind its id. Equal documents hash equal whatever key order or number spelling the
//! cluster returns; the hash is an xxh3-128 like a row's, so [`super::GroupDigest`] and
//! [`super::diff::merge_keyed`] work on documents unchanged.

use serde_json::Value as Json;
use xxhash_rust::xxh3::xxh3_128;

use super::json::write_canonical_json;
use super::DigestError;

/// Hashes documents; keeps its buffer between documents.
#[derive(Debug, Default, Clone)]
pub struct DocHasher {
    buf: Vec<u8>,
}

impl DocHasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// The hash of a parsed document with id `key` (a `_source`, or the encoder's document parsed).
    pub fn hash(&mut self, key: u64, doc: &Json) -> u128 {
        self.buf.clear();
        self.buf.extend_from_slice(&key.to_le_bytes());
        write_canonical_json(doc, &mut self.buf);
        xxh3_128(&self.buf)
    }

    /// The hash of a document given as JSON text: the encoder's document line, or a raw `_source`.
    pub fn hash_text(&mut self, key: u64, text: &[u8]) -> Result<u128, DigestError> {
        let doc: Json = serde_json::from_slice(text).map_err(|e| DigestError::NotJson {
            key,
            message: e.to_string(),
        })?;
        Ok(self.hash(key, &doc))
    }
}

/// The document line of one bulk action as the ES encoder writes it (`{action}\n{document}\n`): the
/// part a target's `_source` holds.
pub fn bulk_document(lines: &[u8]) -> Option<&[u8]> {
    let first_end = lines.iter().position(|&c| c == b'\n')?;
    let rest = &lines[first_end + 1..];
    Some(rest.strip_suffix(b"\n").unwrap_or(rest))
}

/// The top-level fields whose values differ between two documents (canonically compared), sorted; a
/// field present on one side only counts as differing.
pub fn differing_fields(a: &Json, b: &Json) -> Vec<String> {
    let (Json::Object(a), Json::Object(b)) = (a, b) else {
        return if a == b {
            Vec::new()
        } else {
            vec![String::new()]
        };
    };
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort_unstable();
    names.dedup();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    names
        .into_iter()
        .filter(|n| match (a.get(*n), b.get(*n)) {
            (Some(va), Some(vb)) => {
                x.clear();
                y.clear();
                write_canonical_json(va, &mut x);
                write_canonical_json(vb, &mut y);
                x != y
            }
            _ => true,
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_hashes_the_same_whatever_its_key_order_and_spacing() {
        let mut h = DocHasher::new();
        let encoded = b"{\"index\":{\"_index\":\"x\",\"_id\":\"7\"}}\n{\"b\":1.5,\"a\":{\"y\":null,\"x\":[1,2]}}\n";
        let doc = bulk_document(encoded).unwrap();
        assert_eq!(doc, br#"{"b":1.5,"a":{"y":null,"x":[1,2]}}"#);
        let fetched = br#"{ "a": { "x": [1, 2], "y": null }, "b": 1.50 }"#;
        assert_eq!(
            h.hash_text(7, doc).unwrap(),
            h.hash_text(7, fetched).unwrap()
        );
        assert_ne!(
            h.hash_text(7, doc).unwrap(),
            h.hash_text(8, fetched).unwrap()
        );
        assert!(h.hash_text(7, b"{").is_err());
        let a: Json = serde_json::from_slice(doc).unwrap();
        let b: Json = serde_json::from_slice(br#"{"a":{"x":[1,2],"y":null},"b":2,"c":0}"#).unwrap();
        assert_eq!(differing_fields(&a, &b), ["b", "c"]);
        assert!(differing_fields(&a, &serde_json::from_slice(fetched).unwrap()).is_empty());
    }
}
