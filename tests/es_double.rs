//! A stand-in for Elasticsearch that answers what a test scripts, for the failures no real server
//! produces on demand: 429 items, a 503, a half-failed bulk, an answer that never comes. It speaks just
//! enough HTTP/1.1 (Content-Length bodies, keep-alive) for reqwest, on a loopback port of its own, and
//! records every request. Its bulk answers follow the Bulk API response format of the Elasticsearch docs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One request as the double received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `_id`s of a bulk body's action lines, in order.
    pub fn bulk_ids(&self) -> Vec<u64> {
        let text = String::from_utf8_lossy(&self.body);
        text.lines()
            .step_by(2)
            .map(|line| {
                let action: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("bulk action line {line:?}: {e}"));
                action["index"]["_id"]
                    .as_str()
                    .and_then(|id| id.parse().ok())
                    .unwrap_or_else(|| panic!("bulk action without a numeric _id: {line}"))
            })
            .collect()
    }
}

/// What the double answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body,
            delay: Duration::ZERO,
        }
    }

    /// `GET /` of an Elasticsearch 8 node.
    pub fn root() -> Self {
        Self::json(
            200,
            json!({"name": "double", "cluster_name": "es-double", "version": {"number": "8.15.0"},
                   "tagline": "You Know, for Search"}),
        )
    }

    /// A 200 bulk answer: one item per `(id, status)`; an item with status ≥ 300 gets an error whose type
    /// `error_type` gives (`mapper_parsing_exception` for 400, …).
    pub fn bulk(items: &[(u64, u16)]) -> Self {
        let items: Vec<Value> = items
            .iter()
            .map(|&(id, status)| {
                let mut item = json!({"_index": "orders", "_id": id.to_string(), "status": status});
                if status < 300 {
                    item["result"] = json!(if status == 201 { "created" } else { "updated" });
                    item["_version"] = json!(1);
                } else {
                    item["error"] = error_for(id, status);
                }
                json!({ "index": item })
            })
            .collect();
        let errors = items
            .iter()
            .any(|i| i["index"]["status"].as_u64() >= Some(300));
        Self::json(200, json!({"took": 3, "errors": errors, "items": items}))
    }

    /// A whole-request error in Elasticsearch's format.
    pub fn error(status: u16, error_type: &str, reason: &str) -> Self {
        Self::json(
            status,
            json!({"error": {"type": error_type, "reason": reason,
                             "root_cause": [{"type": error_type, "reason": reason}]},
                   "status": status}),
        )
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

fn error_for(id: u64, status: u16) -> Value {
    match status {
        400 => json!({"type": "mapper_parsing_exception",
                      "reason": format!("failed to parse field [amount] of type [integer] in document with id '{id}'. Preview of field's value: 'n/a'"),
                      "caused_by": {"type": "number_format_exception", "reason": "For input string: \"n/a\""}}),
        409 => json!({"type": "version_conflict_engine_exception",
                      "reason": format!("[{id}]: version conflict, current version [9] is higher or equal to the one provided [5]")}),
        429 => json!({"type": "es_rejected_execution_exception",
                      "reason": "rejected execution of coordinating operation [coordinating_and_primary_bytes=0]"}),
        _ => {
            json!({"type": "unavailable_shards_exception", "reason": "primary shard is not active"})
        }
    }
}

type Script = dyn Fn(&Request, usize) -> Reply + Send + Sync;

/// The running double. Its task ends with the test's runtime.
pub struct EsDouble {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl EsDouble {
    /// Starts the double; `script(request, n)` answers every request but `GET /` (which answers like a
    /// healthy node), `n` counting the scripted requests from 0.
    pub async fn start(script: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_with_root(Reply::root(), script).await
    }

    /// Like [`Self::start`], with `root` as the answer to `GET /`.
    pub async fn start_with_root(
        root: Reply,
        script: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let seen = requests.clone();
        tokio::spawn(async move {
            let counter = Arc::new(Mutex::new(0usize));
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, script, counter, root) =
                    (seen.clone(), script.clone(), counter.clone(), root.clone());
                tokio::spawn(async move {
                    serve(stream, seen, script, counter, root).await;
                });
            }
        });
        Self { url, requests }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("requests lock").clone()
    }

    /// The bulk requests so far.
    pub fn bulks(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/_bulk"))
            .collect()
    }
}

async fn serve(
    stream: TcpStream,
    seen: Arc<Mutex<Vec<Request>>>,
    script: Arc<Script>,
    counter: Arc<Mutex<usize>>,
    root: Reply,
) {
    let mut stream = BufReader::new(stream);
    loop {
        let Some(request) = read_request(&mut stream).await else {
            return;
        };
        seen.lock().expect("requests lock").push(request.clone());
        let reply = if request.method == "GET" && request.path == "/" {
            root.clone()
        } else {
            let n = {
                let mut c = counter.lock().expect("counter lock");
                *c += 1;
                *c - 1
            };
            script(&request, n)
        };
        tokio::time::sleep(reply.delay).await;
        let body = reply.body.to_string();
        let head = format!(
            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            reply.status,
            body.len()
        );
        let inner = stream.get_mut();
        if inner.write_all(head.as_bytes()).await.is_err()
            || inner.write_all(body.as_bytes()).await.is_err()
        {
            return;
        }
    }
}

async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if stream.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        stream.read_line(&mut h).await.ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}
