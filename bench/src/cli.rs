//! The benchmark's command line. Contract: every option has a default that reproduces the README's figures
//! (1 000 000 rows, every phase, database `bitmig_bench`, job `bench`); `--name` changes every name the
//! benchmark makes (database, jobs, queues, Redis keys) so two runs on one machine never collide.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// One selectable part of the benchmark, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// MariaDB → MariaDB: INSERT … SELECT, pt-archiver --bulk-insert, bitmig; compensator over the job.
    Copy,
    /// MariaDB → PostgreSQL: pgloader, bitmig.
    Pg,
    /// PostgreSQL → MariaDB: COPY TO STDOUT piped into LOAD DATA LOCAL INFILE, bitmig.
    PgMariadb,
    /// bitmig-compensator verify beside CHECKSUM TABLE and pt-table-checksum; MariaDB → PostgreSQL verify.
    Verify,
    /// Archive: bitmig copy + verify + purge against pt-archiver --bulk-insert --bulk-delete.
    Archive,
    /// A writer changing the source while bitmig-producer --follow and consumers run: lag and rows/s.
    Follow,
    /// The compensator over 1 000 complete groups (10 M ids) written straight into Redis.
    Ledger,
    /// The compensator over --ledger-groups complete groups (default 100 000: 1 000 000 000 ids).
    LedgerScale,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Copy => "copy",
            Phase::Pg => "pg",
            Phase::PgMariadb => "pg-mariadb",
            Phase::Verify => "verify",
            Phase::Archive => "archive",
            Phase::Follow => "follow",
            Phase::Ledger => "ledger",
            Phase::LedgerScale => "ledger-scale",
        }
    }

    /// Whether the phase reads the generated MariaDB `orders` table.
    pub fn needs_source(self) -> bool {
        !matches!(self, Phase::Ledger | Phase::LedgerScale)
    }
}

/// bitmig's rows/s beside the tools a user would pick instead, phase by phase (see README "Benchmark").
#[derive(Debug, Parser)]
#[command(name = "bitmig-bench", version)]
pub struct Options {
    /// Rows of the generated `orders` table.
    #[arg(long, default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub rows: u64,
    /// Where the JSON goes.
    #[arg(long, default_value = "bench-out/bench.json")]
    pub out: PathBuf,
    /// The phases to run, comma-separated (default: all, in the order listed).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "copy,pg,pg-mariadb,verify,archive,follow,ledger,ledger-scale"
    )]
    pub phases: Vec<Phase>,
    /// Names everything the benchmark makes: database `bitmig_NAME` (MariaDB and PostgreSQL), jobs `NAME`,
    /// `NAME_pg`, … and so their queues `bitmig.NAME.*` and Redis keys `bitmig:{NAME…}`.
    #[arg(long, default_value = "bench", value_parser = parse_name)]
    pub name: String,
    /// Seconds any one program may run before it is killed.
    #[arg(long, env = "BENCH_TIMEOUT", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Where the release binaries are.
    #[arg(long, default_value = "target/release")]
    pub bin: PathBuf,
    /// Logs of every program run.
    #[arg(long, default_value = "bench-out/logs")]
    pub logs: PathBuf,
    /// Complete groups of 10 000 ids the ledger-scale phase writes into Redis.
    #[arg(long, default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub ledger_groups: u64,
    /// Changes per second the follow phase's writer makes.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub follow_rate: u64,
    /// Seconds the follow phase's writer runs.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub follow_secs: u64,
    /// Keep what the run made (databases `bitmig_NAME`, the jobs' Redis keys and queues) for a look
    /// afterwards; by default they are dropped at the end (a 1 000 000-row run leaves gigabytes otherwise).
    #[arg(long)]
    pub keep: bool,
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 24
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}`: a name is 1 to 24 lower-case letters, digits or `_`, starting with a letter"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_make_bad_job_or_database_names_are_refused() {
        assert!(parse_name("bench2").is_ok());
        assert!(parse_name("Bench").is_err());
        assert!(parse_name("2bench").is_err());
        assert!(parse_name("bench-2").is_err());
        assert!(parse_name("").is_err());
        assert!(parse_name(&"a".repeat(25)).is_err());
    }

    #[test]
    fn phases_parse_comma_separated_and_default_to_all() {
        let o = Options::try_parse_from(["bitmig-bench", "--phases", "ledger,copy"]).unwrap();
        assert_eq!(o.phases, [Phase::Ledger, Phase::Copy]);
        let o = Options::try_parse_from(["bitmig-bench"]).unwrap();
        assert_eq!(o.phases.len(), 8);
        assert!(Options::try_parse_from(["bitmig-bench", "--phases", "nope"]).is_err());
        assert!(Options::try_parse_from(["bitmig-bench", "--rows", "0"]).is_err());
    }
}
