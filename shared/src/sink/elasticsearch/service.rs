//! Talking to the cluster: one reqwest client (HTTP/1.1, rustls, a connection pool), the credentials in an
//! `Authorization` header marked sensitive, and the two requests the sink makes: `GET /` and `POST /_bulk`.
//!
//! Credentials come from the URL's user info (basic auth) or from `BITMIG_ES_API_KEY` (`ApiKey …`). They
//! are taken out of the URL before it is used or shown: [`EsService::label`] is the URL as it may be logged.

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};

/// The environment variable holding an Elasticsearch API key (the base64 `id:api_key` form Elasticsearch
/// returns as `encoded`).
pub const API_KEY_ENV: &str = "BITMIG_ES_API_KEY";

/// A status and body, or why there is none.
pub(crate) type Reply = Result<(u16, Vec<u8>), SendError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendError {
    /// No answer within the request timeout.
    Timeout(Duration),
    /// Connecting, TLS, or the connection broke: the reason's whole chain.
    Connection(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Timeout(t) => write!(f, "no answer within {t:?}"),
            SendError::Connection(e) => f.write_str(e),
        }
    }
}

pub(crate) struct EsService {
    client: reqwest::Client,
    /// The URL without credentials and without a trailing `/`; paths are appended to it.
    base: String,
    auth: Option<HeaderValue>,
    timeout: Duration,
}

impl EsService {
    pub fn new(
        url: &str,
        api_key: Option<&str>,
        timeout: Duration,
        connect_timeout: Duration,
        max_connections: usize,
    ) -> Result<Self, String> {
        let mut u = url::Url::parse(url).map_err(|e| format!("target.url: not a URL ({e})"))?;
        let user = percent_decode(u.username())?;
        let password = u.password().map(percent_decode).transpose()?;
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
                    "Elasticsearch at {label}: both a user in target.url and {API_KEY_ENV} are set; use one"
                ))
            }
            (Some(b), None) => Some(b),
            (None, Some(key)) => Some(format!("ApiKey {}", key.trim())),
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

    /// The cluster's URL as it may be shown: no user, password or secret-looking query parameter.
    pub fn label(&self) -> String {
        crate::job::redact_url(&self.base)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.client.request(method, format!("{}{path}", self.base));
        if let Some(auth) = &self.auth {
            rb = rb.header(AUTHORIZATION, auth.clone());
        }
        rb
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Reply {
        let response = rb.send().await.map_err(|e| self.error(&e))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| self.error(&e))?;
        Ok((status, body.to_vec()))
    }

    fn error(&self, e: &reqwest::Error) -> SendError {
        if e.is_timeout() {
            SendError::Timeout(self.timeout)
        } else {
            SendError::Connection(chain(e))
        }
    }

    /// `GET /`: the cluster's name and version.
    pub async fn root(&self) -> Reply {
        self.send(self.request(reqwest::Method::GET, "/")).await
    }

    /// `POST /_bulk` with an NDJSON body.
    pub async fn bulk(&self, body: Vec<u8>) -> Reply {
        self.send(
            self.request(reqwest::Method::POST, "/_bulk")
                .header(CONTENT_TYPE, "application/x-ndjson")
                .body(body),
        )
        .await
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
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("target.url: a bad %-escape in the user or password")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "target.url: the user or password is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(url: &str, key: Option<&str>) -> Result<EsService, String> {
        EsService::new(url, key, Duration::from_secs(1), Duration::from_secs(1), 2)
    }

    #[test]
    fn credentials_leave_the_url_for_a_sensitive_header() {
        let s = service(
            "https://elastic:p%40ss%3Aw0rd@es.example:9243/prefix/",
            None,
        )
        .unwrap();
        assert_eq!(s.base, "https://es.example:9243/prefix");
        assert_eq!(s.label(), "https://es.example:9243/prefix");
        let auth = s.auth.as_ref().unwrap();
        assert!(auth.is_sensitive());
        // base64("elastic:p@ss:w0rd")
        assert_eq!(auth.to_str().unwrap(), "Basic ZWxhc3RpYzpwQHNzOncwcmQ=");
        assert!(!format!("{auth:?}").contains("ZWxhc3Rp"), "{auth:?}");
    }

    #[test]
    fn an_api_key_comes_from_the_environment_value() {
        let s = service(
            "http://127.0.0.1:9200",
            Some("VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="),
        )
        .unwrap();
        assert_eq!(
            s.auth.unwrap().to_str().unwrap(),
            "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
        );
        assert!(service("http://127.0.0.1:9200", None)
            .unwrap()
            .auth
            .is_none());
        assert!(service("http://127.0.0.1:9200", Some("  "))
            .unwrap()
            .auth
            .is_none());
        let err = service("http://u:p@127.0.0.1:9200", Some("key"))
            .err()
            .unwrap();
        assert!(err.contains("use one") && !err.contains(":p@"), "{err}");
    }
}
