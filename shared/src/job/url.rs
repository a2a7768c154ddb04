//! URLs that hold credentials: a database URL ([`DbUrl`]) and an Elasticsearch URL ([`EsUrl`]). Their
//! `Debug` and `Display` show them without user, password or secret-looking query parameters; only
//! `expose()` gives the URL to open a connection with.

use std::fmt;

use serde::Serialize;

/// The database engine a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Mysql,
    Postgres,
}

/// A database URL. `Debug` and `Display` show it without user and password.
#[derive(Clone)]
pub struct DbUrl {
    raw: String,
    pub engine: Engine,
}

impl DbUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
        let engine = match parsed.scheme() {
            "mysql" | "mariadb" => Engine::Mysql,
            "postgres" | "postgresql" => Engine::Postgres,
            other => {
                return Err(format!(
                    "unsupported scheme `{other}://` (use mysql:// or postgres://)"
                ))
            }
        };
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err("the URL names no host".into());
        }
        Ok(Self {
            raw: raw.to_owned(),
            engine,
        })
    }

    /// The URL with credentials; only for opening a connection.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The URL with user, password and password-like query parameters removed.
    pub fn redacted(&self) -> String {
        redact_url(&self.raw)
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Strip user, password and secret-looking query parameters from any URL (AMQP, Redis, database).
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .filter(|(k, _)| {
                    let k = k.to_ascii_lowercase();
                    !(k.contains("pass") || k.contains("secret") || k.contains("token"))
                })
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if pairs.is_empty() {
                u.set_query(None);
            } else {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "<unparsable url>".to_owned(),
    }
}

/// An Elasticsearch URL. `Debug` and `Display` show it without user and password.
#[derive(Clone, PartialEq, Eq)]
pub struct EsUrl(String);

impl EsUrl {
    /// Accept an `http://` or `https://` URL with a host.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "unsupported scheme `{}://` (use http:// or https://)",
                parsed.scheme()
            ));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err("the URL names no host".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// The URL with credentials; only for opening a connection.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with user, password and password-like query parameters removed.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for EsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for EsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}
