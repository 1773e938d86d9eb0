//! `history` of one record and `log --actor` of one actor over the stream's files, against
//! `grep -F -c` of the same needle over the same files in the same run (the speed of the disk and
//! memory): issue 14's target is at most 1.5x grep's time and a peak RSS under 64 MB.
//!
//! The files are written directly in the stream's format (audit.log_stream_YYYYMMDD.csv, the
//! header and rows as COPY writes them): BENCH_ROWS rows (default 10,000,000) over BENCH_DAYS
//! daily files (default 30) in a temporary directory, removed at the end. No server is needed.
//! Each command runs BENCH_ROUNDS times (default 3) after one warm-up, in rotating order, and the
//! medians are reported; the files stay in the page cache between runs, as for grep.
//!
//!     cargo bench --bench history
//!     BENCH_ROWS=1000000 cargo bench --bench history

mod support;

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{env_or, measure, median};

const HEADER: &str = "id,changed_at,op,schema_name,table_name,key,old_key,new_row,old_values,\
changed_columns,statement_at,txid,actor,reason,request_id,migration,context,application_name,client_addr\n";
const KEY: u64 = 424_242;
const ACTOR: &str = "user0777@example.com";

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One day's file: `rows` rows of orders, keys below 1,000,000, 1,000 actors; the bench's record
/// is changed a few times a day.
fn write_day(dir: &Path, day: u32, first_id: u64, rows: u64, rng: &mut Rng) -> u64 {
    let date =
        chrono::NaiveDate::from_ymd_opt(2026, 10, 1).unwrap() + chrono::Days::new(u64::from(day));
    let name = dir.join(audit_tail::layout::file_name("audit", "log", date, 1));
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(name).unwrap());
    out.write_all(HEADER.as_bytes()).unwrap();
    let statuses = ["new", "paid", "sent", "returned"];
    let mut bytes = HEADER.len() as u64;
    for i in 0..rows {
        let id = first_id + i;
        let seconds = i * 86_400 / rows;
        let at = format!(
            "{} {:02}:{:02}:{:02}.{:06}",
            date,
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60,
            rng.below(1_000_000)
        );
        let key = if rng.below(rows / 4 + 1) == 0 {
            KEY
        } else {
            rng.below(1_000_000)
        };
        let actor = format!("user{:04}@example.com", rng.below(1000));
        let status = statuses[rng.below(4) as usize];
        let total = rng.below(100_000);
        let line = if rng.below(3) == 0 {
            format!(
                "{id},{at},INSERT,public,orders,\"{{\"\"id\"\": {key}}}\",,\"{{\"\"id\"\": {key}, \"\"note\"\": \"\"\"\", \"\"total\"\": {total}, \"\"status\"\": \"\"{status}\"\"}}\",,,{at}+00,{},{actor},,req-{},,,web,10.0.0.{}\n",
                800_000 + id / 3,
                rng.below(1 << 30),
                rng.below(255)
            )
        } else {
            format!(
                "{id},{at},UPDATE,public,orders,\"{{\"\"id\"\": {key}}}\",,\"{{\"\"id\"\": {key}, \"\"note\"\": \"\"\"\", \"\"total\"\": {total}, \"\"status\"\": \"\"{status}\"\"}}\",\"{{\"\"status\"\": \"\"new\"\"}}\",{{status}},{at}+00,{},{actor},\"customer asked, ticket {}\",req-{},,,web,10.0.0.{}\n",
                800_000 + id / 3,
                rng.below(100_000),
                rng.below(1 << 30),
                rng.below(255)
            )
        };
        bytes += line.len() as u64;
        out.write_all(line.as_bytes()).unwrap();
    }
    out.flush().unwrap();
    bytes
}

fn main() {
    let rows = env_or("BENCH_ROWS", 10_000_000);
    let days = env_or("BENCH_DAYS", 30) as u32;
    let rounds = env_or("BENCH_ROUNDS", 3);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut bytes = 0;
    for day in 0..days {
        let per_day = rows / u64::from(days);
        bytes += write_day(
            dir.path(),
            day,
            u64::from(day) * per_day + 1,
            per_day,
            &mut rng,
        );
    }
    println!(
        "{rows} rows over {days} files, {:.2} GB, in {}",
        bytes as f64 / 1e9,
        dir.path().display()
    );
    let files: Vec<_> = {
        let mut f: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        f.sort();
        f
    };
    let out_dir = dir.path().to_str().unwrap().to_string();
    let bin = env!("CARGO_BIN_EXE_audit-tail");
    let key_needle = format!("{{\"\"id\"\": {KEY}}}");
    type Cmd = (&'static str, Box<dyn Fn() -> Command>);
    let commands: Vec<Cmd> = vec![
        ("grep -F -c KEY", {
            let (files, needle) = (files.clone(), key_needle.clone());
            Box::new(move || {
                let mut c = Command::new("grep");
                c.arg("-F").arg("-c").arg(&needle).args(&files);
                c
            })
        }),
        ("history public.orders KEY", {
            let out_dir = out_dir.clone();
            Box::new(move || {
                let mut c = Command::new(bin);
                c.args([
                    "history",
                    "public.orders",
                    &KEY.to_string(),
                    "--out-dir",
                    &out_dir,
                ]);
                c
            })
        }),
        ("grep -F -c ACTOR", {
            let files = files.clone();
            Box::new(move || {
                let mut c = Command::new("grep");
                c.arg("-F").arg("-c").arg(ACTOR).args(&files);
                c
            })
        }),
        ("log --actor ACTOR", {
            let out_dir = out_dir.clone();
            Box::new(move || {
                let mut c = Command::new(bin);
                c.args(["log", "--actor", ACTOR, "--out-dir", &out_dir]);
                c
            })
        }),
    ];
    let mut walls: Vec<Vec<Duration>> = vec![Vec::new(); commands.len()];
    let mut peaks = vec![0u64; commands.len()];
    let mut outputs = vec![0usize; commands.len()];
    for round in 0..=rounds {
        for i in 0..commands.len() {
            let i = (i + round as usize) % commands.len();
            let mut cmd = commands[i].1();
            cmd.stdout(std::process::Stdio::piped());
            let file = tempfile::NamedTempFile::new_in(dir.path().parent().unwrap()).unwrap();
            cmd.stdout(file.reopen().unwrap());
            let (status, cost) = measure(&mut cmd, || {});
            assert!(
                status.code().is_some_and(|c| c <= 1),
                "{} failed",
                commands[i].0
            );
            outputs[i] = std::fs::read_to_string(file.path())
                .unwrap()
                .lines()
                .count();
            if round > 0 {
                walls[i].push(cost.wall);
                peaks[i] = peaks[i].max(cost.peak_rss_kib);
            }
        }
    }
    let medians: Vec<Duration> = walls.into_iter().map(median).collect();
    for (i, (name, _)) in commands.iter().enumerate() {
        println!(
            "{name:28} {:>8.3} s  peak RSS {:>6.1} MB  ({} lines out)",
            medians[i].as_secs_f64(),
            peaks[i] as f64 / 1024.0,
            outputs[i]
        );
    }
    for (ours, grep) in [(1, 0), (3, 2)] {
        println!(
            "{} / {}: {:.2}x (target <= 1.5x), peak RSS {:.1} MB (target < 64 MB)",
            commands[ours].0,
            commands[grep].0,
            medians[ours].as_secs_f64() / medians[grep].as_secs_f64(),
            peaks[ours] as f64 / 1024.0
        );
    }
}
