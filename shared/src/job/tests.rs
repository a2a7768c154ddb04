//! The job file's rules, one test per kind of mistake.

use super::*;

const GOOD: &str = r#"
name = "orders"
[source]
url = "mysql://app:s3cret@db:3306/shop"
table = "orders"
key = "id"
[target]
kind = "sql"
url = "${TARGET_URL}"
table = "orders_archive"
"#;

fn env(name: &str) -> Option<String> {
    (name == "TARGET_URL")
        .then(|| "mysql://u:topsecret@db2/shop?password=x&ssl-mode=REQUIRED".into())
}

fn parse(text: &str) -> Result<JobSpec, String> {
    JobSpec::parse_str(text, Path::new("job.toml"), &env).map_err(|e| e.to_string())
}

#[test]
fn a_good_job_gets_defaults_and_expands_variables() {
    let job = parse(GOOD).unwrap();
    assert_eq!(job.group_size, 10_000);
    assert_eq!(job.batch_size, 1_000);
    let TargetSpec::Sql(t) = &job.target else {
        panic!()
    };
    assert_eq!(t.write, WriteMode::Upsert);
    assert!(t.url.expose().contains("topsecret"));
}

#[test]
fn the_ledger_spec_carries_no_credentials() {
    let spec = parse(GOOD).unwrap().ledger_spec().to_string();
    assert!(
        !spec.contains("s3cret") && !spec.contains("topsecret") && !spec.contains("app"),
        "{spec}"
    );
    assert!(!spec.contains("password"), "{spec}");
    assert!(spec.contains("ssl-mode=REQUIRED"), "{spec}");
    assert!(!format!("{:?}", parse(GOOD).unwrap()).contains("s3cret"));
}

#[test]
fn bad_jobs_are_refused_naming_the_problem() {
    let cases = [
        (
            GOOD.replace("name = \"orders\"", "name = \"orders\"\ncolour = \"red\""),
            "colour",
        ),
        (
            GOOD.replace("key = \"id\"", "key = \"id\"\ncolour = 1"),
            "colour",
        ),
        (
            GOOD.replace("table = \"orders\"", "table = \"orders; drop table x\""),
            "orders; drop table x",
        ),
        (
            GOOD.replace("table = \"orders\"", "table = \"ord`ers\""),
            "ord`ers",
        ),
        (
            GOOD.replace("${TARGET_URL}", "${NOT_SET_ANYWHERE}"),
            "NOT_SET_ANYWHERE",
        ),
        (
            GOOD.replace("name = \"orders\"", "name = \"Orders!\""),
            "name",
        ),
        (
            GOOD.replace("name = \"orders\"", "name = \"orders\"\ngroup_size = 0"),
            "group_size",
        ),
        (
            GOOD.replace(
                "name = \"orders\"",
                "name = \"orders\"\ngroup_size = 100\nbatch_size = 101",
            ),
            "batch_size",
        ),
        (
            GOOD.replace(
                "name = \"orders\"",
                "name = \"orders\"\ngroup_size = 100000000",
            ),
            "group_size",
        ),
        (
            GOOD.replace("kind = \"sql\"", "kind = \"csv\""),
            "target.kind",
        ),
        (
            GOOD.replace("table = \"orders_archive\"", "table = \"a_{id % 0}\""),
            "modulus 0",
        ),
        (
            GOOD.replace("table = \"orders_archive\"", "table = \"a_{id\""),
            "without",
        ),
        (
            GOOD.replace("key = \"id\"", "key = \"id\"\ncolumns = [\"a\"]"),
            "must include the key",
        ),
        (GOOD.replace("mysql://app", "oracle://app"), "source.url"),
    ];
    for (text, want) in cases {
        let err = parse(&text).unwrap_err();
        assert!(err.contains(want), "want {want:?} in: {err}");
        assert!(err.contains("job.toml"), "the file is named: {err}");
    }
}

#[test]
fn routes_parse_each_kind() {
    let r = Route::parse("orders_{user_id % 16}").unwrap();
    assert_eq!(
        r.parts[1],
        RoutePart::HashMod {
            column: Ident::new("user_id").unwrap(),
            modulus: 16
        }
    );
    let r = Route::parse("orders_{created_at:%Y%m}").unwrap();
    assert!(matches!(&r.parts[1], RoutePart::Time { format, .. } if format == "%Y%m"));
    assert_eq!(
        Route::parse("shop.orders").unwrap().plain(),
        Some("shop.orders")
    );
    assert!(Route::parse("orders_{created_at:%Y-%m}").is_err());
    assert!(Route::parse("{id % 4}").is_err());
}

fn with_target(target_lines: &str) -> String {
    GOOD.replace("table = \"orders_archive\"\n", target_lines)
}

#[test]
fn id_ranges_parse_sorted_and_find_their_table() {
    let job = parse(&with_target(
        "create = true\n[target.ranges]\n\"1000..1999\" = \"shard_b.orders\"\n\"0..999\" = \"orders_a\"\n",
    ))
    .unwrap();
    let TargetSpec::Sql(t) = &job.target else {
        panic!()
    };
    assert!(t.create);
    let TableRoute::Ranges(map) = &t.table else {
        panic!("{:?}", t.table)
    };
    assert_eq!(map.ranges[0].first, 0, "sorted by first");
    assert_eq!(map.table_of(0).unwrap().to_string(), "orders_a");
    assert_eq!(map.table_of(999).unwrap().to_string(), "orders_a");
    assert_eq!(map.table_of(1000).unwrap().to_string(), "shard_b.orders");
    assert_eq!(map.table_of(1999).unwrap().to_string(), "shard_b.orders");
    assert_eq!(map.table_of(2000), None, "past the last range");
    let gap =
        RangeMap::parse(&toml::from_str("\"5..5\" = \"a\"\n\"10..20\" = \"b\"").unwrap()).unwrap();
    assert_eq!(gap.table_of(4), None, "before the first range");
    assert_eq!(gap.table_of(5).unwrap().to_string(), "a", "a one-id range");
    assert_eq!(gap.table_of(7), None, "between ranges");
    let spec = job.ledger_spec();
    assert_eq!(spec["target"]["create"], true);
    assert!(
        spec["target"]["table"]
            .as_str()
            .unwrap()
            .contains("0..999 = orders_a"),
        "{spec}"
    );
    let plain = parse(GOOD).unwrap().ledger_spec();
    assert!(
        plain["target"].get("create").is_none(),
        "create = false leaves the stored spec as before: {plain}"
    );
}

#[test]
fn bad_ranges_routes_and_versions_are_refused() {
    let cases = [
        (
            "[target.ranges]\n\"0..9\" = \"a\"\n\"9..20\" = \"b\"\n",
            "overlap",
        ),
        ("[target.ranges]\n\"10..9\" = \"a\"\n", "first is greater"),
        (
            "[target.ranges]\n\"-1..9\" = \"a\"\n",
            "not a non-negative integer",
        ),
        ("[target.ranges]\n\"0-9\" = \"a\"\n", "is not `first..last`"),
        ("[target.ranges]\n\"0..9\" = \"a b\"\n", "not an identifier"),
        ("[target.ranges]\n\"0..9\" = 3\n", "must be a string"),
        ("[target.ranges]\n", "no ranges"),
        (
            "table = \"t_{id % 2}\"\n[target.ranges]\n\"0..9\" = \"a\"\n",
            "one or the other",
        ),
        ("write = \"upsert\"\n", "`target.table`: missing"),
        ("table = \"t\"\ncreate = \"yes\"\n", "create"),
    ];
    for (lines, want) in cases {
        let err = parse(&with_target(lines)).unwrap_err();
        assert!(err.contains(want), "want {want:?} in: {err}");
        assert!(err.contains("target.") || err.contains("create"), "{err}");
    }
    let cols = |extra: &str| {
        GOOD.replace(
            "key = \"id\"",
            &format!("key = \"id\"\ncolumns = [\"id\", \"amount\"]\n{extra}"),
        )
    };
    let err = parse(&cols("").replace("orders_archive", "o_{user_id % 4}")).unwrap_err();
    assert!(
        err.contains("`user_id` is not in `source.columns`"),
        "{err}"
    );
    let err = parse(&cols("version = \"updated_at\"")).unwrap_err();
    assert!(
        err.contains("source.version") && err.contains("updated_at"),
        "{err}"
    );
    let err = parse(&GOOD.replace("key = \"id\"", "key = \"id\"\nversion = \"id\"")).unwrap_err();
    assert!(err.contains("is the key"), "{err}");
    assert!(parse(&cols("version = \"amount\"")).is_ok());
    let es = "[target]\nkind = \"elasticsearch\"\nurl = \"http://es:9200\"\nindex = \"o\"\ncreate = true\n";
    let err = parse(&format!("{}{es}", GOOD.split("[target]").next().unwrap())).unwrap_err();
    assert!(err.contains("belong to kind = \"sql\""), "{err}");
}

#[test]
fn spec_differences_name_the_fields() {
    let a = serde_json::json!({"name": "x", "source": {"table": "a", "key": "id"}});
    let b = serde_json::json!({"name": "x", "source": {"table": "b", "key": "id"}});
    let d = spec_differences(&a, &b);
    assert_eq!(d.len(), 1);
    assert!(d[0].starts_with("source.table:"), "{d:?}");
}

#[test]
fn urls_with_credentials_never_print_them() {
    let es = EsUrl::parse("https://elastic:hunter2@es.example:9200/?token=abc").unwrap();
    let db = DbUrl::parse("mysql://root:hunter2@db.example:3306/shop?password=abc").unwrap();
    for shown in [
        format!("{es}"),
        format!("{es:?}"),
        format!("{db}"),
        format!("{db:?}"),
    ] {
        assert!(
            !shown.contains("hunter2") && !shown.contains("abc") && !shown.contains("elastic:"),
            "{shown}"
        );
    }
    assert!(es.expose().contains("hunter2"));
    assert!(EsUrl::parse("ftp://es.example").is_err());
}

#[test]
fn the_follow_section_is_read_and_its_mistakes_name_the_file_and_key() {
    assert!(parse(GOOD).unwrap().follow.is_none());
    let job = parse(&format!(
        "{GOOD}\n[follow]\nfrom = \"binlog\"\nserver_id = 4242\nsettle = \"2s\"\n"
    ))
    .unwrap();
    let follow = job.follow.expect("a [follow] section");
    assert_eq!(follow.from, FollowFrom::Binlog { server_id: 4242 });
    assert_eq!(follow.settle, std::time::Duration::from_secs(2));
    // Not part of the stored spec: following does not change what is copied.
    assert!(!parse(GOOD)
        .unwrap()
        .ledger_spec()
        .to_string()
        .contains("follow"));
    let err = parse(&format!("{GOOD}\n[follow]\nfrom = \"binlog\"\n")).unwrap_err();
    assert!(
        err.contains("job.toml") && err.contains("follow.server_id: missing"),
        "{err}"
    );
}

#[test]
fn the_throttle_section_is_read_expanded_and_left_out_of_the_stored_spec() {
    let text = format!(
        "{GOOD}\n[throttle]\nmax_rows_per_s = 5000\nmax_threads_running = 30\n\
         max_replica_lag = \"10s\"\nreplicas = [\"${{TARGET_URL}}\"]\n"
    );
    let job = parse(&text).unwrap();
    assert_eq!(job.throttle.max_rows_per_s, Some(5000));
    assert_eq!(job.throttle.max_threads_running, Some(30));
    assert_eq!(job.throttle.replicas.len(), 1);
    assert!(
        job.throttle.replicas[0].expose().contains("topsecret"),
        "`${{VAR}}` expanded inside [throttle]"
    );
    // An operating knob: the stored spec is the same with or without it, so changing it refuses nothing.
    assert_eq!(job.ledger_spec(), parse(GOOD).unwrap().ledger_spec());
    assert!(parse(GOOD).unwrap().throttle.is_empty());

    let err = parse(&format!("{GOOD}\n[throttle]\nmax_rows_per_s = 0\n")).unwrap_err();
    assert!(
        err.contains("job.toml") && err.contains("`throttle.max_rows_per_s`: 0"),
        "{err}"
    );
    let err = parse(&format!(
        "{GOOD}\n[throttle]\nmax_rows_per_s = \"${{NOPE}}\"\n"
    ))
    .unwrap_err();
    assert!(err.contains("NOPE"), "{err}");
}
