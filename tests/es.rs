//! The Elasticsearch side: the cluster the tests index into (`BITMIG_TEST_ES_URL`, else the osmem-server
//! that `scripts/services --with-es` starts on 127.0.0.1:9200), and what a user would ask it: counts,
//! documents, mappings. Each test's indices start with its job name and are deleted when it ends.

use std::time::Duration;

use serde_json::{json, Value};

/// Where the tests find a cluster when `BITMIG_TEST_ES_URL` is not set.
pub const DEFAULT_ES_URL: &str = "http://127.0.0.1:9200";

/// The cluster of the tests, with the indices one test made. Dropping it deletes every index whose name
/// starts with `<prefix>_` (by name: clusters may refuse wildcard deletes).
pub struct Es {
    pub url: String,
    pub prefix: String,
    client: reqwest::Client,
}

impl Es {
    /// The cluster at `BITMIG_TEST_ES_URL` (or [`DEFAULT_ES_URL`]); panics with what to do when nothing
    /// answers there.
    pub async fn connect(prefix: &str) -> Self {
        let url = std::env::var("BITMIG_TEST_ES_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_ES_URL.to_owned());
        let es = Self {
            url: url.trim_end_matches('/').to_owned(),
            prefix: prefix.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client"),
        };
        match es.client.get(format!("{}/", es.url)).send().await {
            Ok(r) if r.status().is_success() => es,
            other => panic!(
                "no Elasticsearch at {url} ({other:?}): run `scripts/services --with-es` (osmem-server on \
                 127.0.0.1:9200) or set BITMIG_TEST_ES_URL"
            ),
        }
    }

    /// `METHOD path` with an optional JSON body: the status and the JSON answer (`null` when none).
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut rb = self
            .client
            .request(method.clone(), format!("{}{path}", self.url));
        if let Some(body) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Like [`Self::call`], but any status other than 2xx fails the test.
    pub async fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, answer) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path} → {status}: {answer}"
        );
        answer
    }

    /// Creates `index` with `mappings`.
    pub async fn create_index(&self, index: &str, mappings: Value) {
        self.ok(
            "PUT",
            &format!("/{index}"),
            Some(&json!({ "mappings": mappings })),
        )
        .await;
    }

    /// Indexes one document under an external version, as an earlier writer would have.
    pub async fn put_versioned(&self, index: &str, id: u64, version: u64, doc: &Value) {
        self.ok(
            "PUT",
            &format!("/{index}/_doc/{id}?version={version}&version_type=external&refresh=true"),
            Some(doc),
        )
        .await;
    }

    /// Makes what was indexed visible to `_count` and `_search`.
    pub async fn refresh(&self) {
        self.ok("POST", &format!("/{}_*/_refresh", self.prefix), None)
            .await;
    }

    /// `_count` of one index.
    pub async fn count(&self, index: &str) -> u64 {
        let answer = self.ok("GET", &format!("/{index}/_count"), None).await;
        answer["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("_count of {index}: {answer}"))
    }

    /// The names of this test's indices, sorted.
    pub async fn indices(&self) -> Vec<String> {
        let (status, answer) = self.call("GET", &format!("/{}_*", self.prefix), None).await;
        if status == 404 {
            return Vec::new();
        }
        let mut names: Vec<String> = answer
            .as_object()
            .unwrap_or_else(|| panic!("GET {}_* → {status}: {answer}", self.prefix))
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// One document (`_source` and `_version`), or `None` when the index does not hold it.
    pub async fn get(&self, index: &str, id: u64) -> Option<(Value, u64)> {
        let (status, answer) = self.call("GET", &format!("/{index}/_doc/{id}"), None).await;
        match (status, answer["found"].as_bool()) {
            (200, Some(true)) => Some((
                answer["_source"].clone(),
                answer["_version"].as_u64().unwrap_or_default(),
            )),
            (404, _) | (200, Some(false)) => None,
            _ => panic!("GET /{index}/_doc/{id} → {status}: {answer}"),
        }
    }

    /// `_source` of each `(index, id)` (`None` when not found), in order, fetched with `_mget`.
    pub async fn sources(&self, docs: &[(String, u64)]) -> Vec<Option<Value>> {
        let mut out = Vec::with_capacity(docs.len());
        for chunk in docs.chunks(1000) {
            let body = json!({
                "docs": chunk.iter().map(|(index, id)| json!({"_index": index, "_id": id.to_string()})).collect::<Vec<_>>()
            });
            let answer = self.ok("POST", "/_mget", Some(&body)).await;
            let found = answer["docs"].as_array().expect("_mget docs");
            assert_eq!(found.len(), chunk.len(), "_mget answered {answer}");
            for doc in found {
                out.push((doc["found"] == true).then(|| doc["_source"].clone()));
            }
        }
        out
    }
}

impl Drop for Es {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        // Drop also runs while a panic unwinds, when the test's runtime may be gone: a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let client = reqwest::Client::new();
                let names: Vec<String> = match client.get(format!("{url}/{prefix}_*")).send().await
                {
                    Ok(r) => r
                        .text()
                        .await
                        .ok()
                        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                        .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
                        .unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                for name in names
                    .iter()
                    .filter(|n| n.starts_with(&format!("{prefix}_")))
                {
                    if let Err(e) = client.delete(format!("{url}/{name}")).send().await {
                        eprintln!("cleanup: index {name}: {e}");
                    }
                }
            });
        })
        .join();
    }
}

impl crate::TestJob {
    /// Replaces the default job file with one that indexes `src` into Elasticsearch at `es_url` under
    /// `index` (a route); `source_extra` and `target_extra` are TOML lines added to those tables.
    pub fn write_es_job(&self, es_url: &str, index: &str, source_extra: &str, target_extra: &str) {
        let text = format!(
            r#"name = "{name}"
group_size = {group_size}
batch_size = {batch_size}

[source]
url = "{url}"
table = "src"
key = "id"
{source_extra}

[target]
kind = "elasticsearch"
url = "{es_url}"
index = "{index}"
{target_extra}
"#,
            name = self.name,
            group_size = self.group_size,
            batch_size = self.batch_size,
            url = self.database_url,
        );
        self.write_file("job.toml", &text);
    }
}
