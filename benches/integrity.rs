//! `verify --integrity` against `sha256sum` of the same files (issue 16: at most 1.2x).
//!
//! Writes BENCH_ROWS (10,000,000) users_audit-like rows over three days through the file sink
//! itself (`StreamFiles`, the same writer and digests as `stream --signing-key`), a durable point
//! and a digest every 100,000 rows, then times `audit-tail verify --integrity` and
//! `sha256sum` of every stream file, warm cache, in ABBA order over BENCH_ROUNDS pairs. The
//! out-dir is removed at the end.
//!
//!     cargo bench --bench integrity
//!     BENCH_ROWS=1000000 cargo bench --bench integrity

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_tail::capture::{Row, Table};
use audit_tail::integrity::DigestWriter;
use audit_tail::lsn::{Lsn, PgTimestamp};
use audit_tail::sink::copy_csv::Cells;
use audit_tail::sink::files::StreamFiles;
use bytes::Bytes;
use support::{env_or, median};

fn main() {
    let rows = env_or("BENCH_ROWS", 10_000_000);
    let pairs = env_or("BENCH_ROUNDS", 2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let key = dir.path().join("signing.key");
    let bin = env!("CARGO_BIN_EXE_audit-tail");
    assert!(
        Command::new(bin)
            .args(["keygen", "--out"])
            .arg(&key)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    write_out_dir(&out, &key, rows);
    let files: Vec<_> = audit_tail::layout::list(&out)
        .unwrap()
        .into_iter()
        .map(|f| out.join(f.name()))
        .collect();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let digests = std::fs::read_dir(out.join("audit-tail.digests"))
        .unwrap()
        .count();
    println!(
        "integrity: {rows} rows, {} files, {:.0} MB, {digests} digests, written in {:.1} s",
        files.len(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let verify = || {
        let mut cmd = Command::new(bin);
        cmd.args(["verify", "--integrity", "--out-dir"])
            .arg(&out)
            .arg("--public-key")
            .arg(format!("{}.pub", key.display()));
        cmd
    };
    let sha256sum = || {
        let mut cmd = Command::new("sha256sum");
        cmd.args(&files);
        cmd
    };
    // Warm the page cache for both.
    time(verify());
    time(sha256sum());
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..pairs * 2 {
        if matches!(i % 4, 0 | 3) {
            theirs.push(time(sha256sum()));
        } else {
            ours.push(time(verify()));
        }
    }
    let (a, b) = (median(ours.clone()), median(theirs.clone()));
    println!(
        "verify --integrity: median {:.2} s ({:.0} MB/s), runs {ours:?}",
        a.as_secs_f64(),
        bytes as f64 / 1e6 / a.as_secs_f64()
    );
    println!(
        "sha256sum: median {:.2} s ({:.0} MB/s), runs {theirs:?}",
        b.as_secs_f64(),
        bytes as f64 / 1e6 / b.as_secs_f64()
    );
    println!(
        "ratio verify --integrity / sha256sum: {:.2}x",
        a.as_secs_f64() / b.as_secs_f64()
    );
}

/// Runs `cmd` to a successful end; its wall time.
fn time(mut cmd: Command) -> Duration {
    let start = Instant::now();
    let status = cmd.stdout(Stdio::null()).status().unwrap();
    assert!(status.success(), "{cmd:?} failed");
    start.elapsed()
}

/// `rows` rows over three days, written and signed the way the stream writes them.
fn write_out_dir(out: &std::path::Path, key: &std::path::Path, rows: u64) {
    let table = Arc::new(Table {
        oid: 1,
        schema: "public".into(),
        name: "users_audit".into(),
        columns: [
            "id",
            "user_id",
            "changed_at",
            "changed_by",
            "field_changed",
            "old_value",
            "new_value",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect(),
        changed_at: Some(2),
    });
    let mut files = StreamFiles::open(out, Cells::Exact).unwrap();
    let key = audit_tail::integrity::load_signing_key(key).unwrap();
    let writer = DigestWriter::open(out, key, Duration::ZERO, files.durable()).unwrap();
    files.set_signer(writer);
    let per_day = rows.div_ceil(3);
    for i in 0..rows {
        let day = 20 + i / per_day;
        let values = [
            (i + 1).to_string(),
            (i % 100_000).to_string(),
            format!(
                "2025-10-{day} {:02}:{:02}:{:02}.{:06}",
                (i / 3600) % 24,
                (i / 60) % 60,
                i % 60,
                i % 1_000_000
            ),
            "app_user".into(),
            ["name", "email", "role"][(i % 3) as usize].into(),
            format!("old value {i}"),
            format!("new value {}, \"quoted\"", i * 7),
        ];
        let row = Row {
            table: table.clone(),
            values: values.into_iter().map(|v| Some(Bytes::from(v))).collect(),
        };
        files.append(&row, PgTimestamp(0)).unwrap();
        files.commit(Lsn(i + 1));
        if (i + 1) % 100_000 == 0 {
            files.make_durable().unwrap();
        }
    }
    files.make_durable().unwrap();
}
