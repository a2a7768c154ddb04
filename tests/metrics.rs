//! The `--metrics-addr` endpoint of a running program (DESIGN.md §11), read the way Prometheus and a
//! Kubernetes probe read it: a free loopback address to give the program, `GET` with the status and body,
//! one sample's value out of a scrape.

use std::time::Duration;

use crate::wait_for;

/// A loopback address nobody listens on right now, for `--metrics-addr`.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").to_string()
}

/// `GET http://ADDR/PATH`: the status and the body, or why there was no answer.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.map_err(|e| e.to_string())?))
}

/// The value of the sample `name{job="JOB"[,extra]}` in a scrape; `None` when there is no such line.
pub fn sample_of(text: &str, job: &str, name: &str, extra: &str) -> Option<f64> {
    let want = if extra.is_empty() {
        format!("{name}{{job=\"{job}\"}} ")
    } else {
        format!("{name}{{job=\"{job}\",{extra}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .map(|v| v.trim().parse().unwrap_or(f64::NAN))
}

/// [`sample_of`], 0 when absent.
pub fn sample(text: &str, job: &str, name: &str, extra: &str) -> f64 {
    sample_of(text, job, name, extra).unwrap_or(0.0)
}

/// Waits (at most 60 s) until the program at `addr` answers `/metrics` with 200; returns the text.
pub async fn scrape(addr: &str) -> String {
    wait_for(
        &format!("/metrics on {addr}"),
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async move {
            match http_get(addr, "/metrics").await? {
                (200, text) => Ok(text),
                (s, text) => Err(format!("{s}: {text}")),
            }
        },
    )
    .await
}

/// Polls `/metrics` at `addr` (every 100 ms, at most `timeout`) until the sample `name{job,extra}` satisfies
/// `ok`; returns the scrape that did. The panic on timeout shows the last value seen.
pub async fn wait_for_sample(
    addr: &str,
    job: &str,
    name: &str,
    extra: &str,
    timeout: Duration,
    ok: impl Fn(f64) -> bool,
) -> String {
    wait_for(
        &format!("{name}{{{extra}}} on {addr}"),
        timeout,
        Duration::from_millis(100),
        || async {
            let (status, text) = http_get(addr, "/metrics").await?;
            match sample_of(&text, job, name, extra) {
                Some(v) if status == 200 && ok(v) => Ok(text),
                v => Err(format!("status {status}, {name} = {v:?}")),
            }
        },
    )
    .await
}
