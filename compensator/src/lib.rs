//! The compensator: re-drives what the ledger says is missing and reports on a job (DESIGN.md §6 step 4).
//!
//! One module per subcommand, each with its own entry points; `main.rs` only parses the command line and
//! dispatches:
//!
//! - [`redrive`]: `run` — one pass ([`run_once`]) or one every `--every` until cancelled ([`run_every`]).
//! - [`report`](mod@report): `report` — what the ledger says ([`report()`]), exit 3 unless complete.
//! - [`control`]: `pause` / `resume` — the job's `control` hash ([`set_paused`]).

pub mod control;
pub mod redrive;
pub mod report;

pub use control::set_paused;
pub use redrive::{run_every, run_once, PassSummary, RunOptions};
pub use report::{report, Report};

/// Fields of the spec the compensator does not depend on: it never opens the databases, so it may run
/// where their host names differ.
pub(crate) const SPEC_FIELDS_IGNORED: &[&str] = &["source.url", "target.url"];
