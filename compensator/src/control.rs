//! `bitmig-compensator pause|resume`: the operator's switch over every program of a job (DESIGN.md §11).
//!
//! `pause` sets `bitmig:{JOB}:control` to `paused = 1` with the operator's reason and the time; `resume` sets
//! `paused = 0` and clears the reason. Programs poll the hash ([`bitmig_shared::control::PauseWatch`]) and
//! stop taking new work within 2 s; in-flight batches finish. Neither command needs a ledger to exist (a
//! job may be paused before it starts), and neither opens a database or the broker.

use anyhow::Context;
use bitmig_shared::control::{Control, ControlState};
use bitmig_shared::job::JobSpec;
use bitmig_shared::ledger::Ledger;

/// Pause `job` (`Some(reason)`) or resume it (`None`); the control state as it is afterwards.
pub async fn set_paused(
    job: &JobSpec,
    redis_url: &str,
    pause: Option<&str>,
) -> anyhow::Result<ControlState> {
    let ledger = Ledger::connect(redis_url, &job.name)
        .await
        .context("connecting to Redis")?;
    let control = Control::new(ledger.connection(), &job.name);
    match pause {
        Some(reason) => control.pause(reason).await,
        None => control.resume().await,
    }
    .context("writing the job's control hash")?;
    Ok(control.state().await?)
}
