//! What every binary shares on its command line, its exit codes, and shutdown on signals.
//!
//! The one place that decides "bad input → exit 2" (DESIGN.md §3): [`load_job`] for the job file,
//! [`BadInput`] (and [`JobError`](crate::job::JobError)) for errors a program's `run` returns,
//! [`source_error`] for a source that does not fit the job, and [`exit_with`] to end a binary with the
//! code [`exit_code_for`] gives.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exit codes (DESIGN.md §3).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const BAD_INPUT: i32 = 2;
    pub const INCOMPLETE: i32 = 3;
}

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The job file (TOML).
    #[arg(long, value_name = "FILE")]
    pub job: PathBuf,
    /// RabbitMQ URL.
    #[arg(long, env = "BITMIG_AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true, hide_default_value = true)]
    pub amqp_url: String,
    /// Redis URL.
    #[arg(long, env = "BITMIG_REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true, hide_default_value = true)]
    pub redis_url: String,
}

/// Parse `90s`, `10m`, `1h`, `0s` (and humantime's other forms).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like 90s, 10m, 1h ({e})"))
}

/// A token cancelled on the first SIGINT or SIGTERM.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

/// The job file named by `--job`, read, expanded and validated. A bad one ends the process: its error
/// (which names the file and the key) on stderr, exit code [`exit::BAD_INPUT`]. Call it before anything
/// is connected to, so a bad job file loses nothing.
pub fn load_job(common: &Common) -> crate::job::JobSpec {
    match crate::job::JobSpec::load(&common.job) {
        Ok(job) => job,
        Err(e) => {
            // One line: the error's own text already holds its cause (the I/O error of a read).
            eprintln!("error: {e}");
            std::process::exit(exit::BAD_INPUT);
        }
    }
}

/// End a binary on an error its `run` returned: the error and its causes on stderr
/// ([`print_error`]), then the exit code [`exit_code_for`] gives (2 for bad input, 1 otherwise).
pub fn exit_with(e: &anyhow::Error) -> ! {
    print_error(e);
    std::process::exit(exit_code_for(e));
}

/// A source error as a program's `run` returns it: a source that does not fit the job (no such table
/// or column, a key that is not an integer, a column type that cannot be carried) is [`BadInput`],
/// anything else (the server away, a query failing) a run-time failure.
pub fn source_error(e: crate::source::SourceError) -> anyhow::Error {
    use crate::source::SourceError;
    match e {
        SourceError::Schema { .. } | SourceError::Unsupported(_) => BadInput(e.to_string()).into(),
        other => other.into(),
    }
}

/// Print an error and its causes the way the binaries do, on stderr.
pub fn print_error(e: &anyhow::Error) {
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// An error that is the user's input's fault (job file, command line, a job that does not fit the
/// schema or the ledger): the binaries exit with [`exit::BAD_INPUT`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The exit code for an error returned by a program's `run`.
pub fn exit_code_for(e: &anyhow::Error) -> i32 {
    if e.chain().any(|c| {
        c.downcast_ref::<BadInput>().is_some() || c.downcast_ref::<crate::job::JobError>().is_some()
    }) {
        exit::BAD_INPUT
    } else {
        exit::FAILED
    }
}

/// Refuse to run a job that differs from the one recorded in Redis: [`BadInput`] naming the fields.
/// Otherwise says what was found ([`SpecCheck::Absent`](crate::ledger::SpecCheck) when there is no
/// ledger, `Stored` when `store` recorded it now, `Same`).
pub async fn check_spec(
    ledger: &crate::ledger::Ledger,
    job: &crate::job::JobSpec,
    store: bool,
    ignore: &[&str],
) -> anyhow::Result<crate::ledger::SpecCheck> {
    use crate::ledger::SpecCheck;
    match ledger.check_spec(&job.ledger_spec(), store, ignore).await? {
        found @ (SpecCheck::Stored | SpecCheck::Same | SpecCheck::Absent) => Ok(found),
        SpecCheck::Differs(fields) => Err(BadInput(format!(
            "job `{}` in {} differs from the job recorded in Redis (key {}): {}; \
             use the same job file, or a new `name` for a new migration",
            job.name,
            job.path.display(),
            ledger.job_key("spec"),
            fields.join("; ")
        ))
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceError;

    #[test]
    fn input_errors_exit_2_and_the_rest_1() {
        let schema = source_error(SourceError::Schema {
            table: "orders".into(),
            message: "no column `id`".into(),
        });
        let unsupported = source_error(SourceError::Unsupported("arrays".into()));
        let query = source_error(SourceError::Query {
            table: "orders".into(),
            message: "server has gone away".into(),
            transient: true,
        });
        let wrapped = anyhow::Error::from(BadInput("--from 9 is greater than --to 1".into()))
            .context("starting");
        assert_eq!(exit_code_for(&schema), exit::BAD_INPUT, "{schema:#}");
        assert_eq!(exit_code_for(&unsupported), exit::BAD_INPUT);
        assert_eq!(exit_code_for(&wrapped), exit::BAD_INPUT, "a cause counts");
        assert_eq!(exit_code_for(&query), exit::FAILED);
        assert!(schema.to_string().contains("no column `id`"), "{schema}");
    }
}
