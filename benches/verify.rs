//! verify on a day of millions of rows against the crudest peer: `sort` of both files and `cmp`
//! (which only says whether they differ). Rows: BENCH_ROWS, counts separated by commas (default
//! 1,000,000 and 5,000,000).
//!
//!     cargo bench --bench verify

mod support;

use std::io::{BufWriter, Write};
use std::process::Command;

use support::{env_list, measure, median};

fn main() {
    let sizes = env_list("BENCH_ROWS", &[1_000_000, 5_000_000]);
    for rows in sizes {
        run(rows);
    }
}

fn run(rows: u64) {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let nightly = dir.path().join("nightly.csv");
    let stream = out_dir.join("users_audit_stream_20251021.csv");
    write_files(rows, &nightly, &stream);
    let size = std::fs::metadata(&nightly).unwrap().len();
    println!("verify: {rows} rows, {} MB per side", size / 1_000_000);

    let mut ours = Vec::new();
    let mut peer = Vec::new();
    // ABBA: the order alternates so drift on a shared machine falls on both.
    for round in 0..4 {
        let run_ours = |ours: &mut Vec<_>| {
            let (status, cost) = measure(
                Command::new(env!("CARGO_BIN_EXE_audit-tail"))
                    .args(["verify", "--date", "2025-10-21", "--out-dir"])
                    .arg(&out_dir)
                    .arg("--nightly")
                    .arg(&nightly)
                    .stdout(std::process::Stdio::null()),
                || {},
            );
            assert!(status.success());
            ours.push(cost);
        };
        let run_peer = |peer: &mut Vec<_>| {
            let script = format!(
                "LC_ALL=C sort {n} > {d}/a && LC_ALL=C sort {s} > {d}/b && cmp {d}/a {d}/b",
                n = nightly.display(),
                s = stream.display(),
                d = dir.path().display()
            );
            let (status, cost) = measure(Command::new("sh").arg("-c").arg(script), || {});
            assert!(status.success());
            peer.push(cost);
        };
        if round == 0 || round == 3 {
            run_ours(&mut ours);
            run_peer(&mut peer);
        } else {
            run_peer(&mut peer);
            run_ours(&mut ours);
        }
    }
    let ours_wall = median(ours.iter().map(|c| c.wall).collect());
    let peer_wall = median(peer.iter().map(|c| c.wall).collect());
    let ours_rss = ours.iter().map(|c| c.peak_rss_kib).max().unwrap();
    let peer_rss = peer.iter().map(|c| c.peak_rss_kib).max().unwrap();
    println!(
        "audit-tail verify: median {:.2} s, peak RSS {} MB",
        ours_wall.as_secs_f64(),
        ours_rss / 1024
    );
    println!(
        "sort + sort + cmp: median {:.2} s, peak RSS {} MB (the largest sort)",
        peer_wall.as_secs_f64(),
        peer_rss / 1024
    );
    println!(
        "ratio verify / peer: time {:.2}x, memory {:.2}x; {:.0} rows/s (rows {rows})",
        ours_wall.as_secs_f64() / peer_wall.as_secs_f64(),
        ours_rss as f64 / peer_rss as f64,
        rows as f64 / ours_wall.as_secs_f64()
    );
}

/// The same rows on both sides; the stream's in reversed blocks of 1,000, as commit order
/// differs from id order.
fn write_files(rows: u64, nightly: &std::path::Path, stream: &std::path::Path) {
    let header = "id,user_id,changed_at,changed_by,field_changed,old_value,new_value\n";
    let mut n = BufWriter::new(std::fs::File::create(nightly).unwrap());
    let mut s = BufWriter::new(std::fs::File::create(stream).unwrap());
    n.write_all(header.as_bytes()).unwrap();
    s.write_all(header.as_bytes()).unwrap();
    let row = |i: u64| {
        format!(
            "{i},{},2025-10-21 {:02}:{:02}:{:02}.{:06},app@example.com,name,old name {i},\"new, name {i}\"\n",
            i % 100_000,
            i % 24,
            i % 60,
            (i / 7) % 60,
            i % 999_999
        )
    };
    let mut block = Vec::new();
    for i in 1..=rows {
        let line = row(i);
        n.write_all(line.as_bytes()).unwrap();
        block.push(line);
        if block.len() == 1000 || i == rows {
            for line in block.drain(..).rev() {
                s.write_all(line.as_bytes()).unwrap();
            }
        }
    }
}
