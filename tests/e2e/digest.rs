//! The row digest of DESIGN.md §9 against the real servers: the same logical rows stored in MariaDB and in
//! PostgreSQL with the mapped types, read back through bitmig's own readers, digest equal; every kind of
//! damage is found with the right id, kind and column. The MariaDB checksum pushdown finds the same damage
//! from digests computed by the server. Elasticsearch: the `_source` the cluster returns digests equal to
//! the document the sink's encoder made of the source row.

use std::path::Path;

use bitmig_shared::digest::diff::compare_rows;
use bitmig_shared::digest::es::{bulk_document, differing_fields, DocHasher};
use bitmig_shared::digest::pushdown::{mariadb_json_columns, MysqlChecksum};
use bitmig_shared::digest::{
    merge_keyed, proven_equal, ChunkDigests, DiffKind, GroupDigest, RowPlan,
};
use bitmig_shared::ids::to_ranges;
use bitmig_shared::job::{Ident, JobSpec, TableName};
use bitmig_shared::sink::elasticsearch::{EsOptions, EsSink};
use bitmig_shared::sink::Sink;
use bitmig_shared::source::{MySqlSource, PgSource, Source};
use bitmig_shared::value::RowSet;
use mysql_async::prelude::Queryable;

use crate::helpers::es::Es;
use crate::helpers::es_double::{EsDouble, Reply};
use crate::helpers::TestJob;

/// A job whose source is `table` at `url` (the target is irrelevant: only the source reader is used).
fn job_reading(job: &TestJob, url: &str, table: &str) -> JobSpec {
    let text = format!(
        r#"name = "{name}"
group_size = 100000
batch_size = 1000

[source]
url = "{url}"
table = "{table}"
key = "id"

[target]
kind = "sql"
url = "{url}"
table = "unused"
"#,
        name = job.name
    );
    JobSpec::parse_str(&text, Path::new("digest.toml"), &|_| None).expect("a valid job")
}

async fn read_all(source: &dyn Source, first: u64, last: u64) -> RowSet {
    source.read_rows(&[[first, last]]).await.expect("rows read")
}

async fn read_keys(source: &dyn Source, keys: &[u64]) -> RowSet {
    source.read_rows(&to_ranges(keys)).await.expect("rows read")
}

/// `(key, kind, columns)` of every differing id, for asserts.
type Found = Vec<(u64, &'static str, Vec<String>)>;

fn found(diffs: &[bitmig_shared::digest::KeyDiff]) -> Found {
    diffs
        .iter()
        .map(|d| (d.key, d.kind.as_str(), d.columns.clone()))
        .collect()
}

fn cols(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[tokio::test]
async fn mariadb_and_postgres_rows_digest_equal_and_every_damage_is_found() {
    let job = TestJob::new(100_000, 1000).await;
    let pg = job.pg().await;
    let mut my = job.conn().await;
    // zero dates need a permissive sql_mode; TIMESTAMP literals are UTC like the readers'
    my.query_drop("SET time_zone = '+00:00', sql_mode = ''")
        .await
        .unwrap();
    my.query_drop(
        "CREATE TABLE src (id BIGINT PRIMARY KEY, d DECIMAL(10,2), u BIGINT UNSIGNED, f FLOAT, \
         dt DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, zd DATE, b TINYINT(1), j JSON, \
         s VARCHAR(20), n VARCHAR(20), bin VARBINARY(10), tm TIME(6), g CHAR(36), bt BIT(12))",
    )
    .await
    .unwrap();
    pg.sql(
        "CREATE TABLE dst (id bigint PRIMARY KEY, d numeric, u numeric, f real, dt timestamp(6), \
         ts timestamptz, zd date, b boolean, j jsonb, s text, n text, bin bytea, tm time, g uuid, bt bigint)",
    )
    .await;
    // Row 1 and rows 3..=6 start as the same logical row on both sides; 7 only in MariaDB, 8 only in PG.
    let my_base = "'1.50', 18446744073709551615, 0.1, '2024-01-02 03:04:05.123456', \
                   '2024-06-30 23:59:59.5', '0000-00-00', 1, '{\"b\": 1, \"a\": [1, 2.0]}', 'abc', 'x', \
                   X'00FF', '12:34:56.5', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', b'111111111111'";
    let pg_base = "1.5, 18446744073709551615, 0.1, '2024-01-02 03:04:05.123456', \
                   '2024-06-30 23:59:59.5+00', NULL, true, '{\"a\":[1,2],\"b\":1}', 'abc', 'x', \
                   '\\x00ff', '12:34:56.5', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 4095";
    for id in [1, 3, 4, 5, 6, 7] {
        my.query_drop(format!("INSERT INTO src VALUES ({id}, {my_base})"))
            .await
            .unwrap();
    }
    for id in [1, 3, 4, 5, 6, 8] {
        pg.sql(&format!("INSERT INTO dst VALUES ({id}, {pg_base})"))
            .await;
    }
    // Row 2: other values that must compare equal (negative decimal with another scale, zero, midnight, a
    // real date, false, empty JSON array, empty strings, NULLs, a zero BIT).
    my.query_drop(
        "INSERT INTO src VALUES (2, '-12.30', 0, -2.5, '2000-01-01 00:00:00', NULL, '2024-02-29', 0, \
         '[]', '', NULL, '', '00:00:00', NULL, b'0')",
    )
    .await
    .unwrap();
    pg.sql(
        "INSERT INTO dst VALUES (2, -12.3, 0, -2.5, '2000-01-01', NULL, '2024-02-29', false, '[]', '', \
         NULL, '', '00:00', NULL, 0)",
    )
    .await;
    // The damage: one changed column, NULL vs '', 1 µs of a DATETIME(6), a trailing space.
    my.query_drop("UPDATE src SET n = NULL WHERE id = 4")
        .await
        .unwrap();
    pg.sql(
        "UPDATE dst SET s = 'abd' WHERE id = 3; \
         UPDATE dst SET n = '' WHERE id = 4; \
         UPDATE dst SET dt = '2024-01-02 03:04:05.123457' WHERE id = 5; \
         UPDATE dst SET s = 'abc ' WHERE id = 6;",
    )
    .await;

    let mysql_source = MySqlSource::new(&job_reading(&job, &job.database_url, "src"), 2).unwrap();
    let pg_source = PgSource::new(&job_reading(&job, &pg.url, "dst"), 2).unwrap();
    let s = read_all(&mysql_source, 1, 100).await;
    let t = read_all(&pg_source, 1, 100).await;
    assert_eq!(s.rows.len(), 7);
    assert_eq!(t.rows.len(), 7);
    let plan = RowPlan::all_columns(&s.columns, &[&t.columns]).unwrap();
    let mut se = plan.encoder(&s.columns).unwrap();
    let mut te = plan.encoder(&t.columns).unwrap();

    // The equal rows hash equal one by one (so each mapped type compares equal)…
    for id in [1u64, 2] {
        let sr = s.rows.iter().find(|r| r.key == id).unwrap();
        let tr = t.rows.iter().find(|r| r.key == id).unwrap();
        assert_eq!(
            plan.differing_columns(&mut se, &sr.values, &mut te, &tr.values),
            Vec::<String>::new(),
            "row {id}: {:?}\n vs {:?}",
            sr.values,
            tr.values
        );
        assert_eq!(se.hash(id, &sr.values), te.hash(id, &tr.values));
    }
    // …the whole range's digests differ, and the merge names exactly the damage.
    let digest = |rows: &RowSet, enc: &mut bitmig_shared::digest::RowEncoder| {
        let mut d = ChunkDigests::new(1, 100, 10);
        assert_eq!(enc.digest_rows(&rows.rows, &mut d), 0, "every key in range");
        d
    };
    let (sd, td) = (digest(&s, &mut se), digest(&t, &mut te));
    assert_ne!(sd.total(), td.total());
    assert_eq!(sd.differing_ranges(&td), [[1, 10]]);
    let diffs = compare_rows(&plan, (&mut se, &s.rows), (&mut te, &t.rows)).unwrap();
    // what purge could delete: the equal rows only
    assert_eq!(
        proven_equal(&se.key_hashes(&s.rows), &te.key_hashes(&t.rows)).unwrap(),
        [1, 2]
    );
    assert_eq!(
        found(&diffs),
        [
            (3, "differs", cols(&["s"])),
            (4, "differs", cols(&["n"])),
            (5, "differs", cols(&["dt"])),
            (6, "differs", cols(&["s"])),
            (7, "missing", vec![]),
            (8, "extra", vec![]),
        ]
    );

    // Repaired the way a re-drive would write it, the digests are equal.
    pg.sql(&format!(
        "UPDATE dst SET s = 'abc', n = 'x', dt = '2024-01-02 03:04:05.123456' WHERE id IN (3, 5, 6); \
         UPDATE dst SET n = NULL WHERE id = 4; DELETE FROM dst WHERE id = 8; \
         INSERT INTO dst VALUES (7, {pg_base});"
    ))
    .await;
    let t = read_all(&pg_source, 1, 100).await;
    let td = digest(&t, &mut te);
    assert_eq!(sd, td, "equal after the repair");
    assert_eq!(sd.total().rows, 7);
}

#[tokio::test]
async fn mariadb_checksum_pushdown_finds_the_damage_from_server_digests() {
    let job = TestJob::new(100_000, 1000).await;
    let mut my = job.conn().await;
    let ddl = "(id BIGINT UNSIGNED PRIMARY KEY, d DECIMAL(10,2), f FLOAT, dt DATETIME(6), \
               ts TIMESTAMP(6) NULL DEFAULT NULL, j JSON, s VARCHAR(20), n VARCHAR(20), bin VARBINARY(10))";
    my.query_drop("SET SESSION max_recursive_iterations = 10000")
        .await
        .unwrap();
    my.query_drop(format!("CREATE TABLE a {ddl}"))
        .await
        .unwrap();
    my.query_drop(format!("CREATE TABLE b {ddl}"))
        .await
        .unwrap();
    my.query_drop(
        "INSERT INTO a WITH RECURSIVE seq(s) AS (SELECT 1 UNION ALL SELECT s + 1 FROM seq WHERE s < 2000) \
         SELECT s, s * 1.25, s / 7, TIMESTAMPADD(MICROSECOND, s * 1000003, '2024-01-01'), \
         IF(s % 3 = 0, NULL, FROM_UNIXTIME(1700000000 + s)), CONCAT('{\"k\": ', s, ', \"a\": [1, 2]}'), \
         CONCAT('s', s), IF(s % 4 = 0, NULL, CONCAT('n', s)), UNHEX(LPAD(HEX(s), 4, '0')) FROM seq",
    )
    .await
    .unwrap();
    my.query_drop("INSERT INTO b SELECT * FROM a")
        .await
        .unwrap();

    let pool = bitmig_shared::sql::mysql_pool(
        &bitmig_shared::job::DbUrl::parse(&job.database_url).unwrap(),
        2,
    )
    .unwrap();
    let mut conn = pool.get_conn().await.unwrap();
    let names = ["id", "d", "f", "dt", "ts", "j", "s", "n", "bin"];
    let columns: Vec<Ident> = names.iter().map(|n| Ident::new(n).unwrap()).collect();
    let key = Ident::new("id").unwrap();
    let qa = MysqlChecksum::new(&TableName::parse("a").unwrap(), &key, &columns, None);
    let qb = MysqlChecksum::new(&TableName::parse("b").unwrap(), &key, &columns, None);
    let (first, last, chunk) = (1, 4096, 256);

    let da = qa
        .chunk_digests(&mut conn, first, last, chunk)
        .await
        .unwrap();
    let db = qb
        .chunk_digests(&mut conn, first, last, chunk)
        .await
        .unwrap();
    assert_eq!(da.total().rows, 2000);
    assert_ne!(da.total().sum, 0);
    assert_eq!(da, db, "a copy digests equal");

    // The damage, plus a JSON re-spelling that the server's text digest sees and the canonical
    // comparison of the fetched rows clears.
    for sql in [
        "UPDATE b SET d = d + 0.01 WHERE id = 3",
        "UPDATE b SET n = '' WHERE id = 4",
        "UPDATE b SET dt = dt + INTERVAL 1 MICROSECOND WHERE id = 5",
        "UPDATE b SET s = CONCAT(s, ' ') WHERE id = 6",
        "DELETE FROM b WHERE id = 7",
        "UPDATE b SET j = '{\"a\":[1,2],\"k\":9}' WHERE id = 9",
        "INSERT INTO b SELECT 2001, d, f, dt, ts, j, s, n, bin FROM a WHERE id = 1",
    ] {
        my.query_drop(sql).await.unwrap();
    }
    let db = qb
        .chunk_digests(&mut conn, first, last, chunk)
        .await
        .unwrap();
    let ranges = da.differing_ranges(&db);
    assert_eq!(ranges, [[1, 256], [1793, 2048]], "only the damaged chunks");

    // Per key, only within the differing chunks.
    let mut candidates = Vec::new();
    for [lo, hi] in &ranges {
        let ka = qa.key_hashes(&mut conn, *lo, *hi).await.unwrap();
        let kb = qb.key_hashes(&mut conn, *lo, *hi).await.unwrap();
        merge_keyed(ka, kb, |k, kind| candidates.push((k, kind))).unwrap();
    }
    assert_eq!(
        candidates,
        [
            (3, DiffKind::Differs),
            (4, DiffKind::Differs),
            (5, DiffKind::Differs),
            (6, DiffKind::Differs),
            (7, DiffKind::Missing),
            (9, DiffKind::Differs),
            (2001, DiffKind::Extra),
        ]
    );

    // Full rows of the candidates only, compared canonically.
    let keys: Vec<u64> = candidates.iter().map(|c| c.0).collect();
    let sa = MySqlSource::new(&job_reading(&job, &job.database_url, "a"), 2).unwrap();
    let sb = MySqlSource::new(&job_reading(&job, &job.database_url, "b"), 2).unwrap();
    let (ra, rb) = (read_keys(&sa, &keys).await, read_keys(&sb, &keys).await);
    let mut plan = RowPlan::new(&names, &[&ra.columns, &rb.columns]).unwrap();
    // MariaDB's JSON is text to the readers: the catalog says which columns are JSON.
    let json_columns = mariadb_json_columns(&mut conn, None, "a").await.unwrap();
    assert_eq!(json_columns, ["j"]);
    for c in &json_columns {
        assert!(plan.compare_as_json(c));
    }
    let (mut ea, mut eb) = (
        plan.encoder(&ra.columns).unwrap(),
        plan.encoder(&rb.columns).unwrap(),
    );
    let diffs = compare_rows(&plan, (&mut ea, &ra.rows), (&mut eb, &rb.rows)).unwrap();
    assert_eq!(
        found(&diffs),
        [
            (3, "differs", cols(&["d"])),
            (4, "differs", cols(&["n"])),
            (5, "differs", cols(&["dt"])),
            (6, "differs", cols(&["s"])),
            (7, "missing", vec![]),
            (2001, "extra", vec![]),
        ]
    );

    // The client-side digest of the whole range agrees that the tables differ, and the filter narrows
    // the pushdown like the source's reads.
    let filtered = MysqlChecksum::new(
        &TableName::parse("a").unwrap(),
        &key,
        &columns,
        Some("id % 2 = 0"),
    );
    let half = filtered
        .chunk_digests(&mut conn, first, last, chunk)
        .await
        .unwrap();
    assert_eq!(half.total().rows, 1000);
    let mut sum = GroupDigest::default();
    for d in da.chunks() {
        sum.merge(d);
    }
    assert_eq!(sum, da.total());
    drop(conn);
    pool.disconnect().await.ok();
}

/// An Elasticsearch job reading `src` from the test's MariaDB into `index` at `es_url`, without `secret`.
fn es_job(job: &TestJob, es_url: &str, index: &str) -> JobSpec {
    let text = format!(
        r#"name = "{name}"
group_size = 100000
batch_size = 1000

[source]
url = "{url}"
table = "src"
key = "id"

[target]
kind = "elasticsearch"
url = "{es_url}"
index = "{index}"
exclude = ["secret"]
"#,
        name = job.name,
        url = job.database_url,
    );
    JobSpec::parse_str(&text, Path::new("digest_es.toml"), &|_| None).expect("a valid job")
}

#[tokio::test]
async fn elasticsearch_sources_digest_equal_to_the_encoders_documents() {
    let job = TestJob::new(100_000, 1000).await;
    let es = Es::connect(&job.name).await;
    let mut my = job.conn().await;
    my.query_drop("SET time_zone = '+00:00'").await.unwrap();
    my.query_drop(
        "CREATE TABLE src (id BIGINT UNSIGNED PRIMARY KEY, price DECIMAL(10,2), f FLOAT, dt DATETIME(6), \
         ts TIMESTAMP(6) NULL DEFAULT NULL, j JSON, s VARCHAR(20), n VARCHAR(20), secret VARCHAR(20))",
    )
    .await
    .unwrap();
    my.query_drop(
        "INSERT INTO src VALUES \
         (1, '1.50', 0.1, '2024-01-02 03:04:05.123456', '2024-06-30 23:59:59.5', '{\"b\": 1, \"a\": [1, 2.0]}', 'abc', NULL, 'p1'), \
         (2, '-12.30', -2.5, '2000-01-01 00:00:00', NULL, '[]', '', '', 'p2'), \
         (3, '0.00', 3.25, '1999-12-31 23:59:59.999999', '2038-01-19 03:14:07', '{}', 'x y ', 'n', 'p3'), \
         (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL), \
         (5, '99999999.99', 1e30, '2024-02-29 12:00:00', '1970-01-01 00:00:01', '{\"k\": {\"z\": 1, \"y\": [true, null]}}', 'é', 'ü', 'p5')",
    )
    .await
    .unwrap();
    let index = format!("{}_docs", job.name);
    let source = MySqlSource::new(&es_job(&job, &es.url, &index), 2).unwrap();
    let rows = read_all(&source, 1, 100).await;
    assert_eq!(rows.rows.len(), 5);

    // The real cluster holds what the sink wrote…
    let sink = EsSink::new(&es_job(&job, &es.url, &index), EsOptions::from_env(), 2).unwrap();
    sink.prepare(&rows.columns).await.unwrap();
    let outcome = sink.write(&rows).await.unwrap();
    assert_eq!(outcome.written, [1, 2, 3, 4, 5]);
    es.refresh().await;
    // …and a stand-in records the encoder's documents for the same rows: the source side of the digest.
    let double = EsDouble::start(|req, _| {
        let items: Vec<(u64, u16)> = req.bulk_ids().into_iter().map(|id| (id, 201)).collect();
        Reply::bulk(&items)
    })
    .await;
    let recorder =
        EsSink::new(&es_job(&job, &double.url, &index), EsOptions::from_env(), 2).unwrap();
    recorder.prepare(&rows.columns).await.unwrap();
    recorder.write(&rows).await.unwrap();
    let mut hasher = DocHasher::new();
    let mut encoded: Vec<(u64, u128, serde_json::Value)> = Vec::new();
    for bulk in double.bulks() {
        let lines: Vec<&[u8]> = bulk.body.split(|&c| c == b'\n').collect();
        for pair in lines.chunks(2).filter(|p| p.len() == 2 && !p[0].is_empty()) {
            let action: serde_json::Value = serde_json::from_slice(pair[0]).unwrap();
            let id: u64 = action["index"]["_id"].as_str().unwrap().parse().unwrap();
            let mut both = pair[0].to_vec();
            both.push(b'\n');
            both.extend_from_slice(pair[1]);
            both.push(b'\n');
            let doc = bulk_document(&both).unwrap();
            let parsed: serde_json::Value = serde_json::from_slice(doc).unwrap();
            assert!(parsed.get("secret").is_none(), "excluded: {parsed}");
            encoded.push((id, hasher.hash_text(id, doc).unwrap(), parsed));
        }
    }
    encoded.sort_by_key(|e| e.0);
    assert_eq!(encoded.len(), 5);

    let wanted: Vec<(String, u64)> = (1..=5).map(|id| (index.clone(), id)).collect();
    let target_side = |sources: &[Option<serde_json::Value>], hasher: &mut DocHasher| {
        sources
            .iter()
            .zip(1u64..)
            .filter_map(|(s, id)| s.as_ref().map(|doc| (id, hasher.hash(id, doc))))
            .collect::<Vec<(u64, u128)>>()
    };
    let sources = es.sources(&wanted).await;
    let tgt = target_side(&sources, &mut hasher);
    let src: Vec<(u64, u128)> = encoded.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(src, tgt, "every _source equals the encoder's document");
    let digest = |pairs: &[(u64, u128)]| {
        let mut d = GroupDigest::default();
        pairs.iter().for_each(|p| d.add(p.1));
        d
    };
    assert_eq!(digest(&src), digest(&tgt));

    // Damage in the cluster: one field changed, one document gone.
    let mut changed = sources[2].clone().unwrap();
    changed["s"] = serde_json::json!("x y");
    es.ok(
        "PUT",
        &format!("/{index}/_doc/3?refresh=true"),
        Some(&changed),
    )
    .await;
    es.ok("DELETE", &format!("/{index}/_doc/4?refresh=true"), None)
        .await;
    let sources = es.sources(&wanted).await;
    let tgt = target_side(&sources, &mut hasher);
    assert_ne!(digest(&src), digest(&tgt));
    let mut diffs = Vec::new();
    merge_keyed(src.iter().copied(), tgt.iter().copied(), |k, kind| {
        diffs.push((k, kind))
    })
    .unwrap();
    assert_eq!(diffs, [(3, DiffKind::Differs), (4, DiffKind::Missing)]);
    assert_eq!(
        differing_fields(&encoded[2].2, sources[2].as_ref().unwrap()),
        ["s"]
    );
}
