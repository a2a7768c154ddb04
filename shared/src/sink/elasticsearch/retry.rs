//! Reading the sink's bulk answers: what each item of a bulk response means for its row — landed, refused
//! for good, worth another try, or a sign that nothing will land until an operator acts — and how often the
//! sink asks again. Pure functions over status codes and JSON, tested on responses in the shape the
//! Elasticsearch docs give.
//!
//! What a whole response's status means is [`crate::es::classify`]'s, shared with rollover.
//!
//! Nothing is taken on trust: `"errors": false` does not stand in for reading the items, and a response
//! whose items do not match the documents sent is no success at all.

use std::time::Duration;

use serde_json::Value as J;

use crate::es::error_text;

/// Delays between in-process attempts of the documents Elasticsearch asked to have again (429, 5xx) or
/// that a failed request carried. After the last one, the batch is handed back as transient.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub delays: Vec<Duration>,
}

impl Default for RetryPolicy {
    /// 0.25 s, 1 s, 4 s: a short overload passes within the batch; a longer one goes back to the queue's
    /// own delayed retries instead of holding a consumer slot.
    fn default() -> Self {
        Self {
            delays: vec![
                Duration::from_millis(250),
                Duration::from_secs(1),
                Duration::from_secs(4),
            ],
        }
    }
}

/// What one bulk item means for its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ItemVerdict {
    /// The document is in the index (or, under external versioning, a newer one already is).
    Written,
    /// Refused for good (mapping, parse, validation): to `failed` with the reason.
    Rejected(String),
    /// Elasticsearch asked to have it again later (429, 5xx).
    Retry(String),
    /// Nothing in this batch will land until an operator acts (no such index, no permission).
    Stop(String),
}

fn error_type(error: Option<&J>) -> Option<&str> {
    error.and_then(|e| e.get("type")).and_then(J::as_str)
}

/// One item of a bulk response (`{"index": {"status": …, "error": …}}`).
pub(crate) fn classify_item(item: &J, versioned: bool) -> ItemVerdict {
    let Some(result) = item.as_object().and_then(|o| o.values().next()) else {
        return ItemVerdict::Retry(format!("unreadable bulk item {item}"));
    };
    let error = result.get("error");
    let status = result.get("status").and_then(J::as_u64).unwrap_or(0);
    let reason = || {
        error
            .map(error_text)
            .unwrap_or_else(|| format!("status {status}"))
    };
    let is_delete = item.as_object().is_some_and(|o| o.contains_key("delete"));
    match status {
        200 | 201 if error.is_none() => ItemVerdict::Written,
        // A delete whose document or index is not there: nothing left to delete.
        404 if is_delete => ItemVerdict::Written,
        // Under external versioning a conflict means the index holds this version or a newer one.
        409 if versioned
            && error_type(error).is_none_or(|t| t == "version_conflict_engine_exception") =>
        {
            ItemVerdict::Written
        }
        429 | 500..=599 => ItemVerdict::Retry(format!("{status} {}", reason())),
        404 if error_type(error) == Some("index_not_found_exception") => ItemVerdict::Stop(format!(
            "{} (the index does not exist and the cluster does not create indices on demand: create it, \
             or allow action.auto_create_index for it)",
            reason()
        )),
        401 | 403 => ItemVerdict::Stop(format!("{status} {}", reason())),
        400..=499 if status != 409 => ItemVerdict::Rejected(reason()),
        _ => ItemVerdict::Retry(format!("unexpected item status {status}: {}", reason())),
    }
}

/// Every item of a 2xx bulk response, in the order of the documents sent (`sent` = their keys).
/// `Err` when the body cannot be trusted as an answer to this request: the whole request is retried.
pub(crate) fn classify_bulk(
    body: &[u8],
    sent: &[u64],
    versioned: bool,
) -> Result<Vec<ItemVerdict>, String> {
    let j: J =
        serde_json::from_slice(body).map_err(|e| format!("bulk response is not JSON ({e})"))?;
    let items = j
        .get("items")
        .and_then(J::as_array)
        .ok_or("bulk response without `items`")?;
    if items.len() != sent.len() {
        return Err(format!(
            "bulk response has {} items for {} documents sent",
            items.len(),
            sent.len()
        ));
    }
    let mut verdicts = Vec::with_capacity(items.len());
    for (item, key) in items.iter().zip(sent) {
        let id = item
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|r| r.get("_id"))
            .and_then(J::as_str);
        if id.is_some_and(|id| id != key.to_string()) {
            return Err(format!(
                "bulk response items out of order: `_id` {} where {key} was sent",
                id.unwrap_or_default()
            ));
        }
        verdicts.push(classify_item(item, versioned));
    }
    let says_errors = j.get("errors").and_then(J::as_bool);
    let items_report_errors = items.iter().any(|item| {
        item.as_object()
            .and_then(|o| o.values().next())
            .is_none_or(|r| {
                r.get("error").is_some()
                    || !matches!(r.get("status").and_then(J::as_u64), Some(200 | 201))
            })
    });
    if says_errors == Some(true) && !items_report_errors {
        return Err("bulk response says `errors: true` but no item reports one".into());
    }
    Ok(verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Elasticsearch docs' example of a bulk response with a failed item (Bulk API, "Response body").
    const HALF_FAILED: &str = r#"{
      "took": 486, "errors": true,
      "items": [
        {"update": {"_index": "index1", "_id": "5", "status": 404,
          "error": {"type": "document_missing_exception", "reason": "[5]: document missing",
                    "index_uuid": "aAsFqTI0Tc2W0LCWgPNrOA", "shard": "0", "index": "index1"}}},
        {"index": {"_index": "index1", "_id": "6", "_version": 1, "result": "created",
          "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": 0, "_primary_term": 1,
          "status": 201}},
        {"index": {"_index": "index1", "_id": "7", "status": 400,
          "error": {"type": "mapper_parsing_exception",
                    "reason": "failed to parse field [amount] of type [integer] in document with id '7'",
                    "caused_by": {"type": "number_format_exception", "reason": "For input string: \"abc\""}}}},
        {"index": {"_index": "index1", "_id": "8", "status": 429,
          "error": {"type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}}},
        {"index": {"_index": "index1", "_id": "9", "status": 503,
          "error": {"type": "unavailable_shards_exception", "reason": "primary shard is not active"}}},
        {"index": {"_index": "index1", "_id": "10", "_version": 3, "result": "updated", "status": 200}}
      ]
    }"#;

    #[test]
    fn a_delete_of_a_missing_document_or_index_is_done() {
        let item = |status: u64, error: &str| -> J {
            serde_json::from_str(&format!(
                r#"{{"delete": {{"_index": "i", "_id": "1", "status": {status}{error}}}}}"#
            ))
            .unwrap()
        };
        assert_eq!(classify_item(&item(200, ""), false), ItemVerdict::Written);
        assert_eq!(classify_item(&item(404, ""), false), ItemVerdict::Written);
        let gone_index =
            r#", "error": {"type": "index_not_found_exception", "reason": "no such index [i]"}"#;
        assert_eq!(
            classify_item(&item(404, gone_index), false),
            ItemVerdict::Written
        );
        assert!(matches!(
            classify_item(&item(503, ""), false),
            ItemVerdict::Retry(_)
        ));
    }

    #[test]
    fn each_item_is_read_on_its_own() {
        let v = classify_bulk(HALF_FAILED.as_bytes(), &[5, 6, 7, 8, 9, 10], false).unwrap();
        assert_eq!(
            v[0],
            ItemVerdict::Rejected("document_missing_exception: [5]: document missing".into())
        );
        assert_eq!(v[1], ItemVerdict::Written);
        assert_eq!(
            v[2],
            ItemVerdict::Rejected(
                "mapper_parsing_exception: failed to parse field [amount] of type [integer] in document with \
                 id '7' (caused by number_format_exception: For input string: \"abc\")"
                    .into()
            )
        );
        assert!(
            matches!(&v[3], ItemVerdict::Retry(r) if r.contains("429") && r.contains("es_rejected_execution_exception"))
        );
        assert!(matches!(&v[4], ItemVerdict::Retry(r) if r.contains("503")));
        assert_eq!(v[5], ItemVerdict::Written);
    }

    #[test]
    fn a_version_conflict_is_success_only_under_external_versioning() {
        let body = r#"{"took": 3, "errors": true, "items": [
          {"index": {"_index": "orders", "_id": "1", "status": 409,
            "error": {"type": "version_conflict_engine_exception",
                      "reason": "[1]: version conflict, current version [5] is higher or equal to the one provided [4]"}}}]}"#;
        assert_eq!(
            classify_bulk(body.as_bytes(), &[1], true).unwrap(),
            vec![ItemVerdict::Written]
        );
        let v = classify_bulk(body.as_bytes(), &[1], false).unwrap();
        assert!(matches!(&v[0], ItemVerdict::Retry(_)), "{v:?}");
    }

    #[test]
    fn errors_true_is_never_read_as_all_success() {
        // A response that claims errors but whose items all look fine cannot be trusted.
        let body = r#"{"errors": true, "items": [{"index": {"_id": "1", "status": 201}}]}"#;
        assert!(classify_bulk(body.as_bytes(), &[1], false).is_err());
        // Fewer items than documents: the missing ones did not land.
        let body = r#"{"errors": true, "items": []}"#;
        let err = classify_bulk(body.as_bytes(), &[1, 2], false).unwrap_err();
        assert!(err.contains("0 items for 2 documents"), "{err}");
        // And "errors": false does not excuse reading the items.
        let body = r#"{"errors": false, "items": [{"index": {"_id": "1", "status": 400,
            "error": {"type": "mapper_parsing_exception", "reason": "bad"}}}]}"#;
        assert_eq!(
            classify_bulk(body.as_bytes(), &[1], false).unwrap(),
            vec![ItemVerdict::Rejected(
                "mapper_parsing_exception: bad".into()
            )]
        );
    }

    #[test]
    fn a_response_that_does_not_answer_this_request_is_retried() {
        assert!(classify_bulk(b"<html>proxy error</html>", &[1], false).is_err());
        assert!(classify_bulk(br#"{"acknowledged": true}"#, &[1], false).is_err());
        let swapped = r#"{"errors": false, "items": [{"index": {"_id": "2", "status": 201}}, {"index": {"_id": "1", "status": 201}}]}"#;
        assert!(classify_bulk(swapped.as_bytes(), &[1, 2], false).is_err());
    }

    #[test]
    fn a_missing_index_or_permission_stops_the_batch() {
        let item: J = serde_json::from_str(
            r#"{"index": {"_index": "orders_202401", "_id": "1", "status": 404,
                "error": {"type": "index_not_found_exception", "reason": "no such index [orders_202401]"}}}"#,
        )
        .unwrap();
        assert!(
            matches!(classify_item(&item, false), ItemVerdict::Stop(r) if r.contains("no such index"))
        );
        let item: J = serde_json::from_str(
            r#"{"index": {"_id": "1", "status": 403,
                "error": {"type": "security_exception", "reason": "action [indices:data/write/bulk[s]] is unauthorized"}}}"#,
        )
        .unwrap();
        assert!(
            matches!(classify_item(&item, false), ItemVerdict::Stop(r) if r.contains("unauthorized"))
        );
    }
}
