//! The Elasticsearch client the sink and `bitmig-rollover` share: one reqwest client (HTTP/1.1, rustls, a
//! connection pool), the credentials in an `Authorization` header marked sensitive, JSON requests, and what a
//! response means for a retry: 429, 408 and 5xx (and no answer at all) are transient, any other non-2xx is
//! permanent and carries its status, so a caller can tell a 404 from a 400.
//!
//! Credentials come from the URL's user info (basic auth) or from `BITMIG_ES_API_KEY` (`ApiKey …`), never
//! both. The URL arrives as a redacting [`EsUrl`]; the credentials are taken out of it before it is used or
//! shown: [`EsClient::label`] is the URL as it may be logged.
//!
//! What stays with the callers is what is theirs: the sink encodes bulk bodies and reads their items
//! (`sink/elasticsearch/{encoder,retry}.rs`), rollover builds its task requests.

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value as J;

use crate::job::EsUrl;

/// The environment variable holding an Elasticsearch API key (the base64 `id:api_key` form Elasticsearch
/// returns as `encoded`).
pub const API_KEY_ENV: &str = "BITMIG_ES_API_KEY";

/// Why a request gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EsError {
    /// No answer within the request timeout. Worth another try later, but the cluster may still be working
    /// on the request: a caller that retries at once multiplies the waits (the sink hands such a batch back).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Worth another try later: a broken or refused connection, 408, 429 or 5xx.
    #[error("{0}")]
    Transient(String),
    /// The cluster refused the request; trying it again as it is will not help.
    #[error("HTTP {status}: {message}")]
    Permanent { status: u16, message: String },
}

impl EsError {
    pub fn is_transient(&self) -> bool {
        matches!(self, EsError::Transient(_) | EsError::Timeout(_))
    }

    /// The HTTP status of a permanent refusal (404 for a missing index or a forgotten task).
    pub fn status(&self) -> Option<u16> {
        match self {
            EsError::Permanent { status, .. } => Some(*status),
            EsError::Transient(_) | EsError::Timeout(_) => None,
        }
    }
}

/// What `GET /` says about the cluster. `Display` is `distribution version` (`opensearch 2.11.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub version: String,
    /// `elasticsearch` unless the cluster names another (`opensearch`).
    pub distribution: String,
}

impl std::fmt::Display for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.distribution, self.version)
    }
}

/// A cluster at one URL. Cheap to share by reference; requests run concurrently over its pool.
pub struct EsClient {
    client: reqwest::Client,
    /// The URL without credentials and without a trailing `/`; paths are appended to it.
    base: String,
    auth: Option<HeaderValue>,
    timeout: Duration,
}

impl EsClient {
    /// A client for `url`; `key` names the setting in messages (`elasticsearch.url`), `api_key` is the value
    /// of [`API_KEY_ENV`] if any. Refuses credentials given twice or that cannot be a header. Nothing is
    /// connected to.
    pub fn new(
        key: &str,
        url: &EsUrl,
        api_key: Option<&str>,
        timeout: Duration,
        connect_timeout: Duration,
        max_connections: usize,
    ) -> Result<Self, String> {
        let mut u =
            url::Url::parse(url.expose()).map_err(|e| format!("`{key}`: not a URL ({e})"))?;
        let user = percent_decode(key, u.username())?;
        let password = u.password().map(|p| percent_decode(key, p)).transpose()?;
        let _ = u.set_username("");
        let _ = u.set_password(None);
        let label = crate::job::redact_url(u.as_str());
        let basic = (!user.is_empty() || password.is_some()).then(|| {
            use base64::Engine as _;
            let pair = format!("{user}:{}", password.unwrap_or_default());
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        let auth = match (basic, api_key.filter(|k| !k.trim().is_empty())) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "Elasticsearch at {label}: both a user in `{key}` and {API_KEY_ENV} are set; use one"
                ))
            }
            (Some(b), None) => Some(b),
            (None, Some(k)) => Some(format!("ApiKey {}", k.trim())),
            (None, None) => None,
        };
        let auth = auth
            .map(|a| {
                let mut v = HeaderValue::from_str(&a).map_err(|_| {
                    format!("Elasticsearch at {label}: the credentials are not valid header text")
                })?;
                v.set_sensitive(true);
                Ok::<_, String>(v)
            })
            .transpose()?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(max_connections.max(1))
            .user_agent(concat!("bitmig/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("Elasticsearch client: {}", chain(&e)))?;
        let base = u.as_str().trim_end_matches('/').to_owned();
        Ok(Self {
            client,
            base,
            auth,
            timeout,
        })
    }

    /// [`Self::new`] with the API key from the environment.
    pub fn from_env(key: &str, url: &EsUrl, timeout: Duration) -> Result<Self, String> {
        let api_key = std::env::var(API_KEY_ENV).ok();
        Self::new(
            key,
            url,
            api_key.as_deref(),
            timeout,
            timeout.min(Duration::from_secs(10)),
            8,
        )
    }

    /// The cluster's URL as it may be shown: no user, password or secret-looking query parameter.
    pub fn label(&self) -> String {
        crate::job::redact_url(&self.base)
    }

    /// `METHOD path` (path and query, starting with `/`) with an optional JSON body: the raw status and body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&J>,
    ) -> Result<(u16, Vec<u8>), EsError> {
        let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
        self.request(method, path, body).await
    }

    /// `POST /_bulk` with an NDJSON body (one action line, and a document line for writes, each ending in
    /// `\n`): the raw status and body, for the caller to read item by item.
    pub async fn bulk(&self, ndjson: Vec<u8>) -> Result<(u16, Vec<u8>), EsError> {
        let body = Some(("application/x-ndjson", ndjson));
        self.request(reqwest::Method::POST, "/_bulk", body).await
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<(u16, Vec<u8>), EsError> {
        let mut rb = self.client.request(method, format!("{}{path}", self.base));
        if let Some(auth) = &self.auth {
            rb = rb.header(AUTHORIZATION, auth.clone());
        }
        if let Some((content_type, body)) = body {
            rb = rb.header(CONTENT_TYPE, content_type).body(body);
        }
        let response = rb.send().await.map_err(|e| self.error(&e))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| self.error(&e))?;
        Ok((status, bytes.to_vec()))
    }

    /// Like [`Self::send`], the answer classified: a 2xx JSON body, or why not.
    pub async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&J>,
    ) -> Result<J, EsError> {
        let (status, bytes) = self.send(method.clone(), path, body).await?;
        classify(status, &bytes)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            EsError::Transient(format!("{method} {path}: the answer is not JSON ({e})"))
        })
    }

    /// `GET /`: that a cluster answers here, its name and version, for the first log line. A 2xx answer
    /// without a version is no cluster (a proxy's page, another service): permanent, with its status.
    pub async fn check(&self) -> Result<Cluster, EsError> {
        let (status, body) = self.send(reqwest::Method::GET, "/", None).await?;
        classify(status, &body)?;
        let root: J = serde_json::from_slice(&body).unwrap_or_default();
        let Some(version) = root["version"]["number"].as_str() else {
            return Err(EsError::Permanent {
                status,
                message: format!(
                    "GET / answered without a version: is it Elasticsearch? ({})",
                    body_error(&body)
                ),
            });
        };
        let text = |v: &J, default: &str| v.as_str().unwrap_or(default).to_owned();
        Ok(Cluster {
            name: text(&root["cluster_name"], "?"),
            version: version.to_owned(),
            distribution: text(&root["version"]["distribution"], "elasticsearch"),
        })
    }

    fn error(&self, e: &reqwest::Error) -> EsError {
        if e.is_timeout() {
            EsError::Timeout(self.timeout)
        } else {
            EsError::Transient(chain(e))
        }
    }
}

/// What a status means: `Ok` for 2xx, else the error of [`EsError`]'s classes with the body's reason.
pub fn classify(status: u16, body: &[u8]) -> Result<(), EsError> {
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(EsError::Transient(format!(
            "HTTP {status}: {}",
            body_error(body)
        ))),
        401 | 403 => Err(EsError::Permanent {
            status,
            message: format!(
                "{} (check the user and password in the URL, or {API_KEY_ENV}, and the user's privileges)",
                body_error(body)
            ),
        }),
        _ => Err(EsError::Permanent {
            status,
            message: body_error(body),
        }),
    }
}

/// `type: reason (caused by type: reason)` of an Elasticsearch error object, or its text.
pub fn error_text(error: &J) -> String {
    match error {
        J::Object(o) => {
            let ty = o.get("type").and_then(J::as_str).unwrap_or("error");
            let reason = o
                .get("reason")
                .and_then(J::as_str)
                .unwrap_or("no reason given");
            let mut text = format!("{ty}: {reason}");
            if let Some(cause) = o.get("caused_by").filter(|c| c.is_object()) {
                let cty = cause.get("type").and_then(J::as_str).unwrap_or("error");
                let creason = cause.get("reason").and_then(J::as_str).unwrap_or("");
                text.push_str(&format!(" (caused by {cty}: {creason})"));
            }
            text
        }
        J::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The error of a non-2xx response body, short: `type: reason`, else the start of the body.
pub fn body_error(body: &[u8]) -> String {
    match serde_json::from_slice::<J>(body) {
        Ok(j) if j.get("error").is_some() => error_text(&j["error"]),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "empty body".into()
            } else {
                text.chars().take(300).collect()
            }
        }
    }
}

/// An error and its causes on one line, without the URL reqwest puts in its own text (the URL is shown
/// once, redacted, by whoever reports the error).
fn chain(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut top = e.to_string();
    if let Some(url) = e.url() {
        top = top
            .replace(&format!(" ({url})"), "")
            .replace(url.as_str(), "<url>");
    }
    parts.push(top);
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Decode `%XX` escapes of a URL's user or password.
fn percent_decode(key: &str, s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("`{key}`: a bad %-escape in the user or password"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{key}`: the user or password is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str, key: Option<&str>) -> Result<EsClient, String> {
        EsClient::new(
            "elasticsearch.url",
            &EsUrl::parse(url).unwrap(),
            key,
            Duration::from_secs(1),
            Duration::from_secs(1),
            2,
        )
    }

    #[test]
    fn credentials_leave_the_url_for_a_sensitive_header() {
        let c = client(
            "https://elastic:p%40ss%3Aw0rd@es.example:9243/prefix/",
            None,
        )
        .unwrap();
        assert_eq!(c.base, "https://es.example:9243/prefix");
        assert_eq!(c.label(), "https://es.example:9243/prefix");
        let auth = c.auth.as_ref().unwrap();
        assert!(auth.is_sensitive());
        // base64("elastic:p@ss:w0rd")
        assert_eq!(auth.to_str().unwrap(), "Basic ZWxhc3RpYzpwQHNzOncwcmQ=");
        assert!(!format!("{auth:?}").contains("ZWxhc3Rp"), "{auth:?}");
        let err = client("http://u:p@127.0.0.1:9200", Some("key"))
            .err()
            .unwrap();
        assert!(err.contains("use one") && !err.contains(":p@"), "{err}");
        let err = client("http://u:p%zz@127.0.0.1:9200", None).err().unwrap();
        assert!(
            err.contains("elasticsearch.url") && err.contains("%-escape"),
            "{err}"
        );
    }

    #[test]
    fn an_api_key_comes_from_the_environment_value() {
        let c = client(
            "http://127.0.0.1:9200",
            Some("VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="),
        )
        .unwrap();
        assert_eq!(
            c.auth.unwrap().to_str().unwrap(),
            "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
        );
        assert!(client("http://127.0.0.1:9200", None)
            .unwrap()
            .auth
            .is_none());
        assert!(client("http://127.0.0.1:9200", Some("  "))
            .unwrap()
            .auth
            .is_none());
    }

    #[test]
    fn statuses_are_transient_or_permanent() {
        assert_eq!(classify(200, b""), Ok(()));
        let busy =
            br#"{"error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}"#;
        assert_eq!(
            classify(429, busy),
            Err(EsError::Transient(
                "HTTP 429: es_rejected_execution_exception: queue full".into()
            ))
        );
        assert!(
            matches!(classify(503, b""), Err(EsError::Transient(r)) if r.contains("empty body"))
        );
        assert!(classify(502, b"Bad Gateway").unwrap_err().is_transient());
        assert!(EsError::Timeout(Duration::from_millis(500)).is_transient());
        assert_eq!(
            EsError::Timeout(Duration::from_millis(500)).to_string(),
            "no answer within 500ms"
        );
        let gone = br#"{"error": {"type": "resource_not_found_exception", "reason": "task [n:1] isn't running and hasn't stored its results"}}"#;
        let e = classify(404, gone).unwrap_err();
        assert_eq!(e.status(), Some(404));
        assert!(e.to_string().contains("hasn't stored its results"), "{e}");
        assert_eq!(classify(400, b"bad").unwrap_err().status(), Some(400));
        // 413 is permanent as it is; the sink splits the request on it.
        assert_eq!(classify(413, b"").unwrap_err().status(), Some(413));
        let denied = br#"{"error": {"type": "security_exception", "reason": "missing authentication credentials"}, "status": 401}"#;
        let e = classify(401, denied).unwrap_err();
        assert!(
            e.status() == Some(401)
                && e.to_string().contains("missing authentication credentials")
                && e.to_string().contains(API_KEY_ENV),
            "{e}"
        );
    }
}
