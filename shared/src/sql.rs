//! SQL text building shared by sources and sinks: identifier quoting per engine and MySQL connection
//! set-up. Identifiers reach SQL only through [`quote`], after [`crate::job::Ident`] validated them.

use crate::job::{Engine, Ident, TableName};

/// Quote a validated identifier for `engine`.
pub fn quote(engine: Engine, ident: &Ident) -> String {
    match engine {
        Engine::Mysql => format!("`{}`", ident.as_str()),
        Engine::Postgres => format!("\"{}\"", ident.as_str()),
    }
}

/// Quote a possibly qualified table name.
pub fn quote_table(engine: Engine, t: &TableName) -> String {
    match &t.schema {
        Some(s) => format!("{}.{}", quote(engine, s), quote(engine, &t.table)),
        None => quote(engine, &t.table),
    }
}

/// A MySQL/MariaDB pool whose sessions read and write TIMESTAMPs in UTC and talk utf8mb4, so values
/// pass through unchanged whatever the servers' own time zones are.
pub fn mysql_pool(
    url: &crate::job::DbUrl,
    max_connections: usize,
) -> Result<mysql_async::Pool, String> {
    let opts = mysql_async::Opts::from_url(url.expose())
        .map_err(|e| format!("{}: {e}", url.redacted()))?;
    let constraints = mysql_async::PoolConstraints::new(1, max_connections.max(1))
        .ok_or_else(|| "bad pool size".to_owned())?;
    let builder = mysql_async::OptsBuilder::from_opts(opts)
        .init(vec![
            "SET time_zone = '+00:00'",
            "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
        ])
        .stmt_cache_size(128)
        .pool_opts(
            // No COM_RESET_CONNECTION when a connection returns to the pool: it would drop the prepared
            // statements (re-preparing a 7 000-placeholder INSERT per batch costs more than writing it) and
            // the session settings above. Nothing we do leaves other session state behind.
            mysql_async::PoolOpts::default()
                .with_constraints(constraints)
                .with_reset_connection(false),
        );
    Ok(mysql_async::Pool::new(builder))
}

/// Whether a MySQL error is worth retrying: the connection, the server's availability, or a lock.
pub fn mysql_is_transient(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => true,
        mysql_async::Error::Server(s) => matches!(
            s.code,
            // deadlock, lock wait timeout, too many connections, server shutdown, connection killed,
            // query interrupted, read-only (failover), lost connection, server gone away, WSREP not ready
            1213 | 1205
                | 1040
                | 1053
                | 1927
                | 1317
                | 1290
                | 2006
                | 2013
                | 1047
                | 1152
                | 1159
                | 1161
        ),
        _ => false,
    }
}

/// Whether a MySQL error is about the values of a row (so the row, not the batch, is at fault).
pub fn mysql_is_row_error(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Server(s) => matches!(
            s.code,
            // duplicate, column cannot be null, out of range, data too long, truncated, incorrect value,
            // foreign key, check constraint, invalid JSON, incorrect datetime, division by zero
            1062 | 1048
                | 1264
                | 1406
                | 1265
                | 1366
                | 1367
                | 1292
                | 1452
                | 1451
                | 3819
                | 4025
                | 3140
                | 1411
                | 1365
                | 1416
                | 1586
                | 1690
        ),
        _ => false,
    }
}

/// A MySQL error as text without anything from the URL.
pub fn mysql_error_text(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => {
            format!("MySQL error {} ({}): {}", s.code, s.state, s.message)
        }
        mysql_async::Error::Url(_) => "invalid database URL".to_owned(),
        other => other.to_string(),
    }
}
