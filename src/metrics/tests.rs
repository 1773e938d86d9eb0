use std::io::{Read, Write};
use std::sync::Arc;

use super::*;
use crate::capture::Table;

fn table(schema: &str, name: &str) -> Arc<Table> {
    Arc::new(Table {
        oid: 1,
        schema: schema.into(),
        name: name.into(),
        columns: vec!["a".into()],
        changed_at: None,
    })
}

/// The value of the sample line starting with `prefix` (name and labels).
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
}

/// The rows the files sink wrote of table `qualified`, as `text` says.
fn files_rows(text: &str, qualified: &str) -> Option<f64> {
    value(
        text,
        &format!("audit_tail_rows_written_total{{sink=\"files\",table=\"{qualified}\"}}"),
    )
}

#[test]
fn rows_count_once_durable_and_not_when_rewound() {
    let m = Metrics::new();
    let users = table("public", "users_audit");
    let log = table("audit", "log");
    m.row("files", &users);
    m.row("files", &log);
    m.row("files", &users);
    m.commit("files");
    m.row("files", &users); // an open transaction: not durable yet
    m.durable("files");
    let text = m.render();
    assert_eq!(files_rows(&text, "public.users_audit"), Some(2.0), "{text}");
    assert_eq!(files_rows(&text, "audit.log"), Some(1.0), "{text}");
    // What was not durable is sent again after a reconnect: counted once, then.
    m.rewound("files");
    m.row("files", &users);
    m.commit("files");
    m.durable("files");
    let text = m.render();
    assert_eq!(files_rows(&text, "public.users_audit"), Some(3.0), "{text}");
}

#[test]
fn bytes_are_the_growth_of_the_files_and_lag_never_negative() {
    let m = Metrics::new();
    let mut cp = Checkpoint::default();
    cp.files
        .insert("users_audit_stream_20251021.csv".into(), 100);
    m.files_opened(&cp);
    cp.files
        .insert("users_audit_stream_20251021.csv".into(), 150);
    cp.files.insert("audit.log_stream_20251021.csv".into(), 40);
    m.files_made_durable(&cp);
    let text = m.render();
    let bytes = |t: &str| {
        value(
            &text,
            &format!("audit_tail_bytes_written_total{{sink=\"files\",table=\"{t}\"}}"),
        )
    };
    assert_eq!(bytes("public.users_audit"), Some(50.0), "{text}");
    assert_eq!(bytes("audit.log"), Some(40.0), "{text}");

    m.server_position(Lsn(1000));
    m.confirmed(Lsn(400));
    let text = m.render();
    assert_eq!(
        value(&text, "audit_tail_slot_lag_bytes"),
        Some(600.0),
        "{text}"
    );
    // A sample older than the confirmation cannot be below it.
    m.confirmed(Lsn(1200));
    m.server_position(Lsn(1100));
    let text = m.render();
    assert_eq!(
        value(&text, "audit_tail_server_wal_lsn_bytes"),
        Some(1200.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "audit_tail_slot_lag_bytes"),
        Some(0.0),
        "{text}"
    );
}

#[test]
fn every_metric_is_named_with_the_prefix_and_has_help() {
    let m = Metrics::new();
    m.error(Kind::Transient);
    m.made_durable(&[(PgTimestamp(0), 3)], PgTimestamp(2_000));
    m.gauge("archive_pending_messages", "Messages not yet acknowledged")
        .set(7);
    let text = m.render();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("audit_tail_"), "{line}");
    }
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no help for {name}"
        );
    }
    assert_eq!(
        value(&text, "audit_tail_errors_total{kind=\"transient\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "audit_tail_archive_pending_messages"),
        Some(7.0)
    );
    assert_eq!(
        value(
            &text,
            "audit_tail_commit_to_durable_seconds_bucket{le=\"0.002\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn the_server_answers_get_metrics_and_nothing_else() {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    let metrics = METRICS.get_or_init(Metrics::new);
    metrics.reconnected();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    server::spawn(listener, metrics).unwrap();
    let get = |request: &str| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    };
    let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.contains("\r\n\r\n# HELP audit_tail_"), "{ok}");
    assert!(ok.contains("audit_tail_reconnects_total 1\n"), "{ok}");
    assert!(ok.ends_with("# EOF\n"), "{ok}");
    assert!(get("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
    assert!(get("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
}

#[test]
fn an_address_in_use_is_a_usage_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let e = std::net::TcpListener::bind(addr)
        .map_err(|source| MetricsError::Bind { addr, source })
        .unwrap_err();
    assert_eq!(crate::error::kind(&e), Kind::Usage);
    assert!(
        e.to_string()
            .starts_with(&format!("could not listen on {addr} for --metrics")),
        "{e}"
    );
}

/// The archive has no slot, no server WAL and no replication connection: none of the stream's
/// figures (a rule on `audit_tail_streaming == 0` would fire for every archive), but its own,
/// and every error kind from the start.
#[test]
fn the_archive_exposes_its_own_figures_and_none_of_the_streams() {
    let m = Metrics::for_role(Role::Archive);
    // The archive's own call, as src/archive/mod.rs makes it: the same gauge as the set's.
    m.gauge("archive_pending_messages", "messages not yet delivered")
        .set(5);
    m.row("files", &table("public", "users_audit"));
    m.commit("files");
    m.durable("files");
    let text = m.render();
    for stream_only in [
        "audit_tail_streaming",
        "audit_tail_seconds_since_last_commit",
        "audit_tail_slot_",
        "audit_tail_server_wal_lsn_bytes",
        "audit_tail_transactions",
        "audit_tail_commit_to_durable_seconds",
        "audit_tail_sink_",
        "audit_tail_last_commit_timestamp_seconds",
    ] {
        assert!(!text.contains(stream_only), "{stream_only} in\n{text}");
    }
    assert_eq!(
        value(&text, "audit_tail_archive_pending_messages "),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        text.matches("# TYPE audit_tail_archive_pending_messages ")
            .count(),
        1,
        "{text}"
    );
    let since = value(&text, "audit_tail_archive_seconds_since_last_write ").unwrap();
    assert!((0.0..60.0).contains(&since), "{text}");
    assert_eq!(files_rows(&text, "public.users_audit"), Some(1.0), "{text}");
    assert_eq!(value(&text, "audit_tail_reconnects_total "), Some(0.0));
    for kind in register::KINDS {
        assert_eq!(
            value(
                &text,
                &format!("audit_tail_errors_total{{kind=\"{kind}\"}} ")
            ),
            Some(0.0),
            "{kind}: {text}"
        );
    }
    m.error(Kind::Transient);
    let text = m.render();
    assert_eq!(
        value(&text, "audit_tail_errors_total{kind=\"transient\"} "),
        Some(1.0)
    );
    // The stream's set still has them all.
    let text = Metrics::new().render();
    assert!(text.contains("audit_tail_streaming 0"), "{text}");
    assert!(!text.contains("audit_tail_archive_"), "{text}");
}

/// JetStream holds a row once it acknowledged it: rows and bytes for sink="nats" count when the
/// sink's durable position reaches their transaction's end, and what a new connection gives the
/// sink again counts once.
#[test]
fn nats_rows_and_bytes_count_when_jetstream_acknowledged_them() {
    let m = Metrics::new();
    let users = table("public", "users_audit");
    let log = table("audit", "log");
    let nats = |text: &str, what: &str, t: &str| {
        value(
            text,
            &format!("audit_tail_{what}_written_total{{sink=\"nats\",table=\"{t}\"}} "),
        )
    };
    m.row_bytes("nats", &users, 100);
    m.row_bytes("nats", &log, 40);
    m.commit_at("nats", Lsn(100));
    m.row_bytes("nats", &users, 110);
    m.commit_at("nats", Lsn(200));
    m.row_bytes("nats", &users, 7); // open: never counted here
    let text = m.render();
    assert_eq!(nats(&text, "rows", "public.users_audit"), None, "{text}");
    m.sink_position("nats", Lsn(150), Lsn(200));
    let text = m.render();
    assert_eq!(
        nats(&text, "rows", "public.users_audit"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(nats(&text, "bytes", "public.users_audit"), Some(100.0));
    assert_eq!(nats(&text, "rows", "audit.log"), Some(1.0));
    assert_eq!(nats(&text, "bytes", "audit.log"), Some(40.0));
    // A reconnection resumes from 150: the transaction at 200 and the open row come again.
    m.resumed("nats", Lsn(150));
    m.sink_position("nats", Lsn(300), Lsn(300));
    assert_eq!(nats(&m.render(), "rows", "public.users_audit"), Some(1.0));
    m.row_bytes("nats", &users, 110);
    m.commit_at("nats", Lsn(200));
    m.sink_position("nats", Lsn(200), Lsn(200));
    let text = m.render();
    assert_eq!(
        nats(&text, "rows", "public.users_audit"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(nats(&text, "bytes", "public.users_audit"), Some(210.0));
    // A resume point past a queued transaction counts it (acknowledged while disconnected).
    m.row_bytes("nats", &log, 50);
    m.commit_at("nats", Lsn(400));
    m.resumed("nats", Lsn(400));
    assert_eq!(nats(&m.render(), "rows", "audit.log"), Some(2.0));
    // The files' own counting is untouched.
    assert_eq!(files_rows(&m.render(), "public.users_audit"), None);
}

/// docs/operations.md lists every metric of both commands, and its alert rules parse, come in
/// one group per scrape job (`audit-tail` for streams, `audit-tail-archive` for archives) and
/// name only metrics that job's command exposes.
#[test]
fn the_operations_guide_lists_every_metric_and_its_rules_use_real_ones() {
    let guide = include_str!("../../docs/operations.md");
    let section = guide
        .split("## Metrics and alerts")
        .nth(1)
        .expect("a \"Metrics and alerts\" section");
    let render = |role: Role| {
        let m = Metrics::for_role(role);
        m.rows_written("files", "public.t", 1);
        m.bytes_written("files", "public.t", 1);
        m.error(Kind::Io);
        m.sink_position("nats", Lsn(1), Lsn(2));
        m.render()
    };
    let families = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    };
    let samples = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
            .collect()
    };
    let (stream, archive) = (render(Role::Stream), render(Role::Archive));
    assert!(families(&stream).len() >= 12, "{stream}");
    assert!(families(&archive).len() >= 6, "{archive}");
    for family in families(&stream).iter().chain(&families(&archive)) {
        assert!(
            section.contains(&format!("`{family}")),
            "{family} is not in the guide"
        );
    }
    let rules = section
        .split("```yaml\n")
        .find(|block| block.starts_with("groups:"))
        .and_then(|r| r.split("```").next())
        .expect("the alert rules");
    let docs = yaml_rust2::YamlLoader::load_from_str(rules).expect("the rules are YAML");
    let groups = docs[0]["groups"].as_vec().expect("groups");
    let mut jobs = Vec::new();
    for group in groups {
        let job = group["name"].as_str().expect("a group name");
        let exposed = match job {
            "audit-tail" => samples(&stream),
            "audit-tail-archive" => samples(&archive),
            other => panic!("a rule group for an unknown job {other:?}"),
        };
        jobs.push(job);
        let alerts = group["rules"].as_vec().expect("rules");
        assert!(alerts.len() >= 3, "{job}");
        for alert in alerts {
            let expr = alert["expr"].as_str().expect("an expr");
            // A rule selects its own job, so it never fires for the other command.
            assert!(
                expr.contains(&format!("job=\"{job}\"")),
                "{job}: {expr:?} does not select job=\"{job}\""
            );
            for word in expr.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                if word.starts_with("audit_tail_") {
                    assert!(
                        exposed.iter().any(|s| s == word),
                        "{word} in {expr:?} is not a metric of {job}"
                    );
                }
            }
        }
    }
    assert_eq!(jobs, ["audit-tail", "audit-tail-archive"]);
}
