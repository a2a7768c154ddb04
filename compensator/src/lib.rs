//! The compensator: re-drives what the ledger says is missing and reports on a job (DESIGN.md §6 step 4).
//!
//! One module per subcommand, each with its own entry points; `main.rs` only parses the command line and
//! dispatches:
//!
//! - [`redrive`]: `run` — one pass ([`run_once`], with `--verify` [`run_pass`]) or one every `--every`
//!   until cancelled ([`run_every`]).
//! - [`report`](mod@report): `report` — what the ledger says ([`report()`]), exit 3 unless complete.
//! - [`verify`](mod@verify): `verify` — content compared group by group ([`verify()`]), exit 3 unless
//!   every group is equal.
//! - [`purge`](mod@purge): `purge` — delete from the source the rows proven equal in the target
//!   ([`purge()`], DESIGN.md §10).
//! - [`indexes`](mod@indexes): `indexes` — the source's secondary indexes on the tables bitmig created,
//!   after the copy ([`indexes()`]).
//! - [`control`]: `pause` / `resume` — the job's `control` hash ([`set_paused`]).

pub mod control;
pub mod indexes;
pub mod purge;
pub mod redrive;
pub mod report;
mod republish;
pub mod verify;

pub use control::set_paused;
pub use indexes::{indexes, IndexesSummary};
pub use purge::{purge, PurgeOptions, PurgeSummary};
pub use redrive::{run_every, run_once, run_pass, PassSummary, RunOptions};
pub use report::{report, Report};
pub use verify::{verify, VerifyOptions, VerifySummary};

/// Fields of the spec the compensator does not depend on: `run` and `report` never open the databases,
/// so they may run where their host names differ (`verify` opens them with the URLs it is given).
pub(crate) const SPEC_FIELDS_IGNORED: &[&str] = &["source.url", "target.url"];
