//! SQL text building shared by sources and sinks: identifier quoting per engine and MySQL connection
//! set-up. Identifiers reach SQL only through [`quote`], after [`crate::job::Ident`] validated them.

use crate::ids::{count_in, IdRange};
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

/// Whether `table` exists (its `schema`, else the session's database): one look-up in
/// `information_schema`, used by the sink before it creates a table and by `indexes` before it reads one.
pub async fn mysql_table_exists(
    conn: &mut mysql_async::Conn,
    table: &TableName,
) -> Result<bool, mysql_async::Error> {
    use mysql_async::prelude::Queryable;
    let found: Option<u8> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
            (
                table.schema.as_ref().map(|s| s.as_str()),
                table.table.as_str(),
            ),
        )
        .await?;
    Ok(found.is_some())
}

/// A MySQL/MariaDB pool whose sessions read and write TIMESTAMPs in UTC and talk utf8mb4, so values
/// pass through unchanged whatever the servers' own time zones are.
pub fn mysql_pool(
    url: &crate::job::DbUrl,
    max_connections: usize,
) -> Result<mysql_async::Pool, String> {
    let raw = mysql_url_with_ssl_mode(url.expose())?;
    let opts = mysql_async::Opts::from_url(&raw).map_err(|e| {
        // The driver's URL errors may quote the URL: say what is wrong without it.
        let what = match e {
            mysql_async::UrlError::UnknownParameter { param } => {
                format!("unknown URL parameter `{param}`")
            }
            mysql_async::UrlError::InvalidParamValue { param, .. } => {
                format!("bad value for URL parameter `{param}`")
            }
            _ => "not a usable MySQL URL".to_owned(),
        };
        format!("{}: {what}", url.redacted())
    })?;
    let constraints = mysql_async::PoolConstraints::new(1, max_connections.max(1))
        .ok_or_else(|| "bad pool size".to_owned())?;
    let builder = mysql_async::OptsBuilder::from_opts(opts)
        .init(vec![
            "SET time_zone = '+00:00'",
            "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
        ])
        .stmt_cache_size(128)
        // Serves only the in-memory files the SQL sink registers for its `LOAD DATA LOCAL INFILE`.
        .local_infile_handler(Some(crate::sink::sql::serve_infile))
        .pool_opts(
            // No COM_RESET_CONNECTION when a connection returns to the pool: it would drop the prepared
            // statements (re-preparing a 7 000-placeholder INSERT per batch costs more than writing it) and
            // the session settings above. Nothing we do leaves other session state behind.
            // A non-zero idle TTL also keeps up to `max_connections` idle connections between uses: with the
            // default (zero) the pool keeps one and closes every other connection as it comes back, so a busy
            // consumer reconnected — and re-prepared its statements — for almost every batch.
            mysql_async::PoolOpts::default()
                .with_constraints(constraints)
                .with_inactive_connection_ttl(std::time::Duration::from_secs(60))
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

/// Accept the `ssl-mode` parameter of MySQL's own clients (`DISABLED`, `PREFERRED`, `REQUIRED`, `VERIFY_CA`,
/// `VERIFY_IDENTITY`) by translating it into the driver's `require_ssl` / `verify_ca` / `verify_identity`.
pub fn mysql_url_with_ssl_mode(raw: &str) -> Result<String, String> {
    let Ok(mut u) = url::Url::parse(raw) else {
        return Ok(raw.to_owned());
    };
    let mut mode = None;
    let mut kept: Vec<(String, String)> = Vec::new();
    for (k, v) in u.query_pairs() {
        if k.eq_ignore_ascii_case("ssl-mode")
            || k.eq_ignore_ascii_case("sslmode")
            || k.eq_ignore_ascii_case("ssl_mode")
        {
            mode = Some(v.to_ascii_uppercase());
        } else {
            kept.push((k.into_owned(), v.into_owned()));
        }
    }
    let Some(mode) = mode else {
        return Ok(raw.to_owned());
    };
    let (require, ca, identity) = match mode.as_str() {
        "DISABLED" | "PREFERRED" => (false, false, false),
        "REQUIRED" => (true, false, false),
        "VERIFY_CA" => (true, true, false),
        "VERIFY_IDENTITY" => (true, true, true),
        other => {
            return Err(format!(
                "ssl-mode `{other}` is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"
            ))
        }
    };
    if require {
        kept.push(("require_ssl".into(), "true".into()));
        kept.push(("verify_ca".into(), ca.to_string()));
        kept.push(("verify_identity".into(), identity.to_string()));
    }
    if kept.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok(u.to_string())
}

/// A URL's host as a server's identity: lowercased, and the loopback's names (`localhost`, `127.0.0.1`,
/// `::1`) as one, so that a server named two ways is one server.
pub fn server_host(host: &str) -> String {
    match host.to_ascii_lowercase().as_str() {
        "localhost" | "127.0.0.1" | "::1" | "[::1]" => "localhost".to_owned(),
        h => h.to_owned(),
    }
}

/// A batch whose span is at most this many times its id count names its keys as the span less its gaps.
const DENSE_SPAN_FACTOR: u64 = 4;

/// The condition matching exactly the keys of `ranges` (ascending, non-overlapping), key column `k`. A dense
/// batch is one `BETWEEN` over its span less its gaps (`NOT IN`: a binary search per row, and one range
/// read); a sparse one lists its ranges, which the server tries one by one for every row (measured by hand
/// on the benchmark's batches of 1 000 ids in 144 ranges: MariaDB spent 5.3–6.3 CPU-seconds copying the
/// table the first way, 7.2–10.0 the second).
pub(crate) fn batch_keys(k: &str, ranges: &[IdRange]) -> String {
    let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
        return "FALSE".into();
    };
    let (lo, hi) = (first[0], last[1]);
    let ids = count_in(ranges);
    if hi - lo < ids.saturating_mul(DENSE_SPAN_FACTOR) {
        let gaps: Vec<String> = ranges
            .windows(2)
            .flat_map(|w| (w[0][1] + 1)..w[1][0])
            .map(|id| id.to_string())
            .collect();
        if gaps.is_empty() {
            return format!("{k} BETWEEN {lo} AND {hi}");
        }
        return format!(
            "{k} BETWEEN {lo} AND {hi} AND {k} NOT IN ({})",
            gaps.join(",")
        );
    }
    ranges
        .iter()
        .map(|[lo, hi]| {
            if lo == hi {
                format!("{k} = {lo}")
            } else {
                format!("{k} BETWEEN {lo} AND {hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_mode_becomes_the_drivers_parameters() {
        let u = mysql_url_with_ssl_mode("mysql://u:p@h/db?ssl-mode=REQUIRED").unwrap();
        assert!(
            u.contains("require_ssl=true") && u.contains("verify_ca=false"),
            "{u}"
        );
        assert!(mysql_async::Opts::from_url(&u).is_ok());
        let u =
            mysql_url_with_ssl_mode("mysql://h/db?ssl-mode=verify_identity&prefer_socket=false")
                .unwrap();
        assert!(
            u.contains("verify_identity=true") && u.contains("prefer_socket=false"),
            "{u}"
        );
        let u = mysql_url_with_ssl_mode("mysql://h/db?ssl-mode=DISABLED").unwrap();
        assert!(!u.contains('?'), "{u}");
        assert!(mysql_url_with_ssl_mode("mysql://h/db?ssl-mode=SOMETIMES").is_err());
        assert_eq!(
            mysql_url_with_ssl_mode("mysql://h/db").unwrap(),
            "mysql://h/db"
        );
    }

    #[test]
    fn a_dense_batch_is_its_span_less_its_gaps_and_a_sparse_one_lists_its_ranges() {
        assert_eq!(batch_keys("k", &[[5, 9]]), "k BETWEEN 5 AND 9");
        // 10 ids over a span of 40: dense.
        assert_eq!(
            batch_keys("k", &[[1, 5], [36, 40]]),
            format!(
                "k BETWEEN 1 AND 40 AND k NOT IN ({})",
                (6..36).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
            )
        );
        // 10 ids over a span of 41: sparse.
        assert_eq!(
            batch_keys("k", &[[1, 5], [37, 40], [41, 41]]),
            "k BETWEEN 1 AND 5 OR k BETWEEN 37 AND 40 OR k = 41"
        );
        // Every key the condition admits is the batch's, and every key of the batch is admitted.
        for ranges in [vec![[1, 5], [36, 40]], vec![[3, 3], [5, 6], [9, 12]]] {
            let sql = batch_keys("k", &ranges);
            let admitted: Vec<u64> = (0..60).filter(|&k| admits(&sql, k)).collect();
            let want: Vec<u64> = crate::ids::expand(&ranges).collect();
            assert_eq!(admitted, want, "{sql}");
        }
    }

    /// Evaluates the two shapes [`batch_keys`] writes for key `v`.
    fn admits(sql: &str, v: u64) -> bool {
        let between = |part: &str| {
            let nums: Vec<u64> = part
                .split(|c: char| !c.is_ascii_digit())
                .filter(|p| !p.is_empty())
                .map(|p| p.parse().unwrap())
                .collect();
            match nums.as_slice() {
                [lo, hi] => (*lo..=*hi).contains(&v),
                [one] => v == *one,
                _ => panic!("{part}"),
            }
        };
        match sql.split_once(" AND k NOT IN (") {
            Some((span, gaps)) => {
                between(span)
                    && !gaps
                        .trim_end_matches(')')
                        .split(',')
                        .any(|g| g.parse::<u64>().unwrap() == v)
            }
            None => sql.split(" OR ").any(between),
        }
    }
}
