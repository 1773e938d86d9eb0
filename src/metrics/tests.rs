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

/// docs/operations.md lists every metric, and its alert rules parse and name only metrics that
/// exist.
#[test]
fn the_operations_guide_lists_every_metric_and_its_rules_use_real_ones() {
    let guide = include_str!("../../docs/operations.md");
    let section = guide
        .split("## Metrics and alerts")
        .nth(1)
        .expect("a \"Metrics and alerts\" section");
    let m = Metrics::new();
    m.rows_written("files", "public.t", 1);
    m.bytes_written("files", "public.t", 1);
    m.error(Kind::Io);
    m.sink_position("nats", Lsn(1), Lsn(2));
    let text = m.render();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert!(families.len() >= 12, "{families:?}");
    for family in &families {
        assert!(
            section.contains(&format!("`{family}")),
            "{family} is not in the guide"
        );
    }
    let rules = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|r| r.split("```").next())
        .expect("the alert rules");
    let docs = yaml_rust2::YamlLoader::load_from_str(rules).expect("the rules are YAML");
    let alerts = docs[0]["groups"][0]["rules"].as_vec().expect("rules");
    assert!(alerts.len() >= 5);
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    for alert in alerts {
        let expr = alert["expr"].as_str().expect("an expr");
        for word in expr.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if word.starts_with("audit_tail_") {
                assert!(
                    samples.contains(&word),
                    "{word} in {expr:?} is not a metric"
                );
            }
        }
    }
}
