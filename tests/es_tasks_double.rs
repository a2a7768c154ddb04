//! A stand-in cluster for `bitmig-rollover`: in-memory indices with `_reindex`, `_delete_by_query`,
//! `_tasks/{id}`, `_count`, `_refresh`, `_cat/indices`, and `_bulk` / `_doc` for seeding, over the plumbing of
//! [`EsDouble`]. Tasks run for a number of polls and then complete, doing their work at once; a test
//! injects what no real cluster does on demand: a completion with failures, a copy that silently misses
//! documents (its counts add up, `_count` does not), a task the cluster forgets (404), 429 and 5xx while
//! polling. At every `GET _tasks/{id}` it records how many tasks of each kind were running.
//!
//! Queries understood: `match_all`, `range` (`gte`/`gt`/`lte`/`lt` compared as strings or numbers), and
//! `bool` with `must`/`filter` lists — what the month queries use.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};

use crate::es_double::{EsDouble, Reply, Request};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    Reindex,
    Delete,
}

#[derive(Debug, Clone)]
struct Task {
    kind: TaskKind,
    /// The hot index (reindex source, delete target).
    index: String,
    dest: String,
    query: Value,
    polls: u32,
    completed: Option<Value>,
}

/// What a test can see and steer; [`TasksDouble::state`] locks it.
#[derive(Debug, Default)]
pub struct Cluster {
    pub indices: BTreeMap<String, BTreeMap<String, Value>>,
    tasks: BTreeMap<String, Task>,
    next_task: u64,
    /// A task reports `completed` at this poll (1: the first poll).
    pub polls_to_complete: u32,
    /// Reindex tasks of these hot indices complete with a failure and copy nothing.
    pub fail_reindex: HashSet<String>,
    /// Reindex tasks of these hot indices silently leave out one document (their counts still add up).
    pub lose_one: HashSet<String>,
    /// The first task of each of these hot indices is forgotten at its first poll (404).
    pub forget_once: HashSet<String>,
    forgotten: HashSet<String>,
    /// A late write: at the first `_count` of the first index, the document (`_id`, `_source`) lands in the
    /// second (a hot index receiving a document of a month whose copy is being proven).
    pub late_write: Option<(String, String, String, Value)>,
    /// The next polls answer with these statuses instead (429, 503, …).
    pub poll_faults: VecDeque<u16>,
    /// Running tasks of each kind, at every poll.
    pub running_at_polls: Vec<HashMap<TaskKind, usize>>,
    /// Every task started: (kind, hot index, dest).
    pub started: Vec<(TaskKind, String, String)>,
    /// Deletes started while the monthly index did not hold every document the delete removes.
    pub unproven_deletes: Vec<String>,
}

impl Cluster {
    fn running(&self) -> HashMap<TaskKind, usize> {
        let mut out = HashMap::new();
        for t in self.tasks.values().filter(|t| t.completed.is_none()) {
            *out.entry(t.kind).or_default() += 1;
        }
        out
    }

    /// The most tasks of `kind` running at any poll.
    pub fn max_running(&self, kind: TaskKind) -> usize {
        self.running_at_polls
            .iter()
            .filter_map(|m| m.get(&kind).copied())
            .max()
            .unwrap_or(0)
    }

    /// How many tasks of `kind` were started on `index`.
    pub fn starts(&self, kind: TaskKind, index: &str) -> usize {
        self.started
            .iter()
            .filter(|(k, i, _)| *k == kind && i == index)
            .count()
    }

    /// Documents of `index` that match `query`.
    pub fn count(&self, index: &str, query: &Value) -> usize {
        self.indices
            .get(index)
            .map(|docs| docs.values().filter(|d| matches(query, d)).count())
            .unwrap_or(0)
    }

    /// Puts `docs` (`_id`, `_source`) into `index`.
    pub fn seed(&mut self, index: &str, docs: impl IntoIterator<Item = (String, Value)>) {
        self.indices
            .entry(index.to_owned())
            .or_default()
            .extend(docs);
    }

    fn complete(&mut self, id: &str) -> Value {
        let Some(task) = self.tasks.get(id).cloned() else {
            return Value::Null;
        };
        let source: Vec<(String, Value)> = self
            .indices
            .get(&task.index)
            .map(|docs| {
                docs.iter()
                    .filter(|(_, d)| matches(&task.query, d))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let n = source.len() as u64;
        let response = match task.kind {
            TaskKind::Reindex if self.fail_reindex.contains(&task.index) => json!({
                "took": 5, "timed_out": false, "total": n, "created": 0, "updated": 0, "deleted": 0, "batches": 1,
                "version_conflicts": 0, "noops": 0, "failures": [{"index": task.dest, "id": source.first().map(|s| s.0.clone()),
                    "cause": {"type": "mapper_parsing_exception", "reason": "failed to parse field [start_date] of type [date]"},
                    "status": 400}]
            }),
            TaskKind::Reindex => {
                let lose = self.lose_one.contains(&task.index);
                let copied: Vec<(String, Value)> =
                    source.into_iter().skip(usize::from(lose)).collect();
                let (mut created, mut updated) = (0u64, 0u64);
                if copied.is_empty() {
                    // Like Elasticsearch: nothing to copy, no destination index created.
                    return self.completed(id, json!({"took": 1, "timed_out": false, "total": 0, "created": 0,
                        "updated": 0, "deleted": 0, "batches": 0, "version_conflicts": 0, "noops": 0, "failures": []}));
                }
                let dest = self.indices.entry(task.dest.clone()).or_default();
                for (k, v) in copied {
                    if dest.insert(k, v).is_some() {
                        updated += 1;
                    } else {
                        created += 1;
                    }
                }
                json!({"took": 5, "timed_out": false, "total": created + updated, "created": created,
                       "updated": updated, "deleted": 0, "batches": 1, "version_conflicts": 0, "noops": 0,
                       "failures": []})
            }
            TaskKind::Delete => {
                let dest = self.indices.get(&task.dest);
                let unproven = source
                    .iter()
                    .any(|(k, v)| dest.and_then(|d| d.get(k)) != Some(v));
                if unproven {
                    self.unproven_deletes.push(id.to_owned());
                }
                if let Some(docs) = self.indices.get_mut(&task.index) {
                    for (k, _) in &source {
                        docs.remove(k);
                    }
                }
                json!({"took": 5, "timed_out": false, "total": n, "deleted": n, "batches": 1,
                       "version_conflicts": 0, "noops": 0, "failures": []})
            }
        };
        self.completed(id, response)
    }

    fn completed(&mut self, id: &str, response: Value) -> Value {
        if let Some(t) = self.tasks.get_mut(id) {
            t.completed = Some(response.clone());
        }
        response
    }

    fn answer(&mut self, r: &Request) -> Reply {
        let (path, query) = r.path.split_once('?').unwrap_or((&r.path, ""));
        let body: Value = if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&r.body).unwrap_or(Value::Null)
        };
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (r.method.as_str(), parts.as_slice()) {
            ("GET", ["_cat", "indices", pattern]) => {
                let names: Vec<Value> = self
                    .indices
                    .keys()
                    .filter(|n| glob(pattern, n))
                    .map(|n| json!({ "index": n }))
                    .collect();
                if names.is_empty() && !pattern.contains('*') {
                    return not_found(pattern);
                }
                Reply::json(200, Value::Array(names))
            }
            ("POST", ["_reindex"]) => {
                assert!(
                    query.contains("wait_for_completion=false"),
                    "a synchronous reindex: {}",
                    r.path
                );
                let index = body["source"]["index"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let dest = body["dest"]["index"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if !self.indices.contains_key(&index) {
                    return not_found(&index);
                }
                let q = body["source"]
                    .get("query")
                    .cloned()
                    .unwrap_or(json!({"match_all": {}}));
                self.start(TaskKind::Reindex, index, dest, q)
            }
            ("POST", [index, "_delete_by_query"]) => {
                assert!(
                    query.contains("wait_for_completion=false"),
                    "a synchronous delete: {}",
                    r.path
                );
                if !self.indices.contains_key(*index) {
                    return not_found(index);
                }
                // The monthly index of the delete: the one a reindex of this index and query wrote.
                let q = body
                    .get("query")
                    .cloned()
                    .unwrap_or(json!({"match_all": {}}));
                let dest = self
                    .tasks
                    .values()
                    .filter(|t| t.kind == TaskKind::Reindex && t.index == *index && t.query == q)
                    .map(|t| t.dest.clone())
                    .next_back()
                    .unwrap_or_default();
                self.start(TaskKind::Delete, (*index).to_owned(), dest, q)
            }
            ("GET", ["_tasks", id]) => {
                self.running_at_polls.push(self.running());
                if let Some(status) = self.poll_faults.pop_front() {
                    return Reply::error(
                        status,
                        "es_rejected_execution_exception",
                        "rejected execution (injected)",
                    );
                }
                let id = (*id).to_owned();
                let Some(task) = self.tasks.get(&id).cloned() else {
                    return task_not_found(&id);
                };
                if self.forget_once.contains(&task.index) && !self.forgotten.contains(&task.index) {
                    self.forgotten.insert(task.index.clone());
                    self.tasks.remove(&id);
                    return task_not_found(&id);
                }
                let polls = task.polls + 1;
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.polls = polls;
                }
                let response = match task.completed {
                    Some(r) => Some(r),
                    None if polls >= self.polls_to_complete => Some(self.complete(&id)),
                    None => None,
                };
                let action = match task.kind {
                    TaskKind::Reindex => "indices:data/write/reindex",
                    TaskKind::Delete => "indices:data/write/delete/byquery",
                };
                let total = self.count(&task.index, &task.query);
                let mut answer = json!({
                    "completed": response.is_some(),
                    "task": {"node": "double", "id": 1, "type": "transport", "action": action,
                             "status": {"total": total, "created": 0, "updated": 0, "deleted": 0, "batches": 0,
                                        "version_conflicts": 0, "noops": 0},
                             "description": format!("reindex from [{}] to [{}]", task.index, task.dest),
                             "cancellable": true}
                });
                if let Some(r) = response {
                    answer["task"]["status"] = r.clone();
                    answer["response"] = r;
                }
                Reply::json(200, answer)
            }
            ("POST" | "GET", [index, "_refresh"]) => Reply::json(
                200,
                json!({"_shards": {"total": 1, "successful": 1, "failed": 0}}),
            )
            .unless_missing(self.indices.contains_key(*index), index),
            ("POST" | "GET", [index, "_count"]) => {
                if !self.indices.contains_key(*index) {
                    return not_found(index);
                }
                let q = body
                    .get("query")
                    .cloned()
                    .unwrap_or(json!({"match_all": {}}));
                let answer = json!({"count": self.count(index, &q), "_shards": {"total": 1, "successful": 1}});
                if self.late_write.as_ref().is_some_and(|(at, ..)| at == index) {
                    if let Some((_, hot, id, doc)) = self.late_write.take() {
                        self.seed(&hot, [(id, doc)]);
                    }
                }
                Reply::json(200, answer)
            }
            ("PUT" | "POST", [index, "_doc", id]) => {
                self.seed(index, [((*id).to_owned(), body)]);
                Reply::json(
                    201,
                    json!({"_index": index, "_id": id, "result": "created"}),
                )
            }
            ("POST" | "PUT", ["_bulk"]) => {
                let text = String::from_utf8_lossy(&r.body).into_owned();
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                let mut items = Vec::new();
                for pair in lines.chunks(2) {
                    let action: Value = serde_json::from_str(pair[0]).unwrap_or(Value::Null);
                    let doc: Value = pair
                        .get(1)
                        .and_then(|l| serde_json::from_str(l).ok())
                        .unwrap_or(Value::Null);
                    let index = action["index"]["_index"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let id = action["index"]["_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    self.seed(&index, [(id.clone(), doc)]);
                    items.push(json!({"index": {"_index": index, "_id": id, "status": 201, "result": "created"}}));
                }
                Reply::json(200, json!({"took": 1, "errors": false, "items": items}))
            }
            _ => Reply::error(
                400,
                "illegal_argument_exception",
                &format!("no handler for {} {}", r.method, r.path),
            ),
        }
    }

    fn start(&mut self, kind: TaskKind, index: String, dest: String, query: Value) -> Reply {
        self.next_task += 1;
        let id = format!("double:{}", self.next_task);
        self.started.push((kind, index.clone(), dest.clone()));
        self.tasks.insert(
            id.clone(),
            Task {
                kind,
                index,
                dest,
                query,
                polls: 0,
                completed: None,
            },
        );
        Reply::json(200, json!({ "task": id }))
    }
}

trait UnlessMissing {
    fn unless_missing(self, exists: bool, index: &str) -> Reply;
}

impl UnlessMissing for Reply {
    fn unless_missing(self, exists: bool, index: &str) -> Reply {
        if exists {
            self
        } else {
            not_found(index)
        }
    }
}

fn not_found(index: &str) -> Reply {
    Reply::error(
        404,
        "index_not_found_exception",
        &format!("no such index [{index}]"),
    )
}

fn task_not_found(id: &str) -> Reply {
    Reply::error(
        404,
        "resource_not_found_exception",
        &format!("task [{id}] isn't running and hasn't stored its results"),
    )
}

fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((pre, rest)) => {
            name.starts_with(pre)
                && (0..=name.len() - pre.len()).any(|i| {
                    name.is_char_boundary(pre.len() + i) && glob(rest, &name[pre.len() + i..])
                })
        }
    }
}

fn matches(query: &Value, doc: &Value) -> bool {
    if query.get("match_all").is_some() || query.is_null() {
        return true;
    }
    if let Some(range) = query.get("range").and_then(Value::as_object) {
        return range.iter().all(|(field, cond)| {
            let Some(v) = doc.get(field) else {
                return false;
            };
            let cmp = |bound: &Value| match (v, bound) {
                (Value::String(a), Value::String(b)) => Some(a.as_str().cmp(b.as_str())),
                (a, b) => a
                    .as_f64()
                    .zip(b.as_f64())
                    .and_then(|(a, b)| a.partial_cmp(&b)),
            };
            use std::cmp::Ordering::*;
            cond.as_object().is_some_and(|c| {
                c.iter().all(|(op, bound)| match (op.as_str(), cmp(bound)) {
                    ("gte", Some(o)) => o != Less,
                    ("gt", Some(o)) => o == Greater,
                    ("lte", Some(o)) => o != Greater,
                    ("lt", Some(o)) => o == Less,
                    ("format" | "time_zone", _) => true,
                    _ => false,
                })
            })
        });
    }
    if let Some(b) = query.get("bool") {
        let all = |key: &str| {
            b.get(key)
                .and_then(Value::as_array)
                .is_none_or(|qs| qs.iter().all(|q| matches(q, doc)))
        };
        let none = b
            .get("must_not")
            .and_then(Value::as_array)
            .is_none_or(|qs| !qs.iter().any(|q| matches(q, doc)));
        return all("must") && all("filter") && none;
    }
    panic!("the double does not understand the query {query}")
}

/// The double and its cluster.
pub struct TasksDouble {
    pub url: String,
    cluster: Arc<Mutex<Cluster>>,
    _double: EsDouble,
}

impl TasksDouble {
    /// An empty cluster whose tasks complete at their `polls_to_complete`-th poll.
    pub async fn start(polls_to_complete: u32) -> Self {
        let cluster = Arc::new(Mutex::new(Cluster {
            polls_to_complete,
            ..Default::default()
        }));
        let c = cluster.clone();
        let double = EsDouble::start(move |r, _| c.lock().expect("cluster lock").answer(r)).await;
        Self {
            url: double.url.clone(),
            cluster,
            _double: double,
        }
    }

    /// The cluster, to seed, steer or inspect.
    pub fn state(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().expect("cluster lock")
    }
}
