//! Canonical JSON: the same document written the same way whatever key order, spacing or number spelling
//! the engine chose. Object keys sorted by their bytes, no whitespace, strings escaped as serde_json
//! escapes them, numbers by value (`2.0` = `2`, `1.50` = `1.5`; integers exactly, other numbers as the
//! shortest text that reads back as the same `f64`).

use serde_json::Value as Json;

/// Appends `doc` in canonical form to `out`.
pub fn write_canonical_json(doc: &Json, out: &mut Vec<u8>) {
    match doc {
        Json::Null => out.extend_from_slice(b"null"),
        Json::Bool(true) => out.extend_from_slice(b"true"),
        Json::Bool(false) => out.extend_from_slice(b"false"),
        Json::Number(n) => write_number(n, out),
        Json::String(s) => write_string(s, out),
        Json::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical_json(item, out);
            }
            out.push(b']');
        }
        Json::Object(map) => {
            let mut entries: Vec<(&String, &Json)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_canonical_json(v, out);
            }
            out.push(b'}');
        }
    }
}

/// The canonical form of JSON text, or `None` when it is not JSON.
pub fn canonical_json_text(text: &[u8]) -> Option<Vec<u8>> {
    let doc: Json = serde_json::from_slice(text).ok()?;
    let mut out = Vec::with_capacity(text.len());
    write_canonical_json(&doc, &mut out);
    Some(out)
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // Serialising a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Largest integer an `f64` holds exactly with all smaller ones (2^53).
const EXACT_F64_INT: f64 = 9_007_199_254_740_992.0;

fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(f) = n.as_f64() {
        if f.fract() == 0.0 && f.abs() < EXACT_F64_INT {
            let _ = write!(out, "{}", f as i64);
        } else {
            let _ = serde_json::to_writer(&mut *out, &f);
        }
    } else {
        // arbitrary-precision numbers (not enabled here): their text
        out.extend_from_slice(n.to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        String::from_utf8(canonical_json_text(s.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn json_key_order_spacing_and_number_spelling_vanish() {
        assert_eq!(
            canon(r#" { "z" : [ 1 , 2.0, -0.5e1 ], "a": {"c": null, "b": true} } "#),
            r#"{"a":{"b":true,"c":null},"z":[1,2,-5]}"#
        );
        assert_eq!(
            canon(r#"{"é": "x\"y", "e": 1.50}"#),
            r#"{"e":1.5,"é":"x\"y"}"#
        );
        assert_eq!(canon("18446744073709551615"), "18446744073709551615");
        assert_eq!(canon("-9223372036854775808"), "-9223372036854775808");
        assert_eq!(canon("1e300"), canon("1.0e300"));
        assert!(canonical_json_text(b"{").is_none());
    }
}
