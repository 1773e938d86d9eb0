//! What the NATS tests share: reading back what JetStream holds.

#![allow(dead_code)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

/// One stored message: subject, headers we read, body.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub id: String,
    pub end_lsn: Option<String>,
    pub body: serde_json::Value,
}

/// Every message of `stream`, in order, read through an ephemeral consumer.
pub async fn read_all(url: &str, stream: &str) -> Vec<Stored> {
    let client = async_nats::connect(url).await.expect("connect to nats");
    let js = jetstream::new(client);
    let mut stream = js.get_stream(stream).await.expect("the stream exists");
    let total = stream.info().await.unwrap().state.messages as usize;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            let headers = message.headers.clone().unwrap_or_default();
            let get = |n: &str| headers.get(n).map(|v| v.as_str().to_string());
            out.push(Stored {
                subject: message.subject.to_string(),
                id: get("Nats-Msg-Id").unwrap_or_default(),
                end_lsn: get("Audit-Tail-End-Lsn"),
                body: serde_json::from_slice(&message.payload).unwrap(),
            });
        }
    }
    out
}

/// How many messages `stream` holds.
pub async fn count(url: &str, stream: &str) -> u64 {
    let client = async_nats::connect(url).await.expect("connect to nats");
    let js = jetstream::new(client);
    let mut stream = js.get_stream(stream).await.expect("the stream exists");
    stream.info().await.unwrap().state.messages
}

/// `stream --until now --nats URL` into `out`: everything committed so far, in the files and
/// JetStream; panics with the stream's stderr when it fails.
pub fn catch_up_with_nats(
    db: &crate::common::TestDb,
    out: &std::path::Path,
    url: &str,
) -> std::process::Output {
    let run = crate::common::stream_command(
        db,
        out,
        &["--until", "now", "--format", "none", "--nats", url],
    )
    .output()
    .expect("run audit-tail stream");
    assert!(
        run.status.success(),
        "stream --nats failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    run
}

/// The stream files of `dir` (name → bytes), as src/layout.rs lists them.
pub fn csv_files(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    audit_tail::layout::list(dir)
        .unwrap()
        .into_iter()
        .map(|f| {
            let name = f.name();
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

/// `audit-tail archive` from `url` into `out`, with `extra` arguments.
pub fn archive_command(url: &str, out: &std::path::Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_audit-tail"));
    cmd.arg("archive")
        .arg("--nats")
        .arg(url)
        .arg("--out-dir")
        .arg(out)
        .args(extra)
        .env("RUST_LOG", "audit_tail=debug");
    cmd
}

/// The lengths of the CSV files in `dir`, by name.
fn csv_sizes(dir: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".csv"))
                .map(|e| {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    (e.file_name().to_string_lossy().into_owned(), len)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the archive's files are byte for byte the stream's files (and there are some).
/// Gives up after 60 s in which the archive's files did not grow (a debug build catching up on
/// tens of MB on a loaded machine takes longer than that, and is not stuck). The contents are
/// read only once the lengths agree: reading both copies every poll slowed the archive down.
pub fn wait_same_files(stream_out: &std::path::Path, archive_out: &std::path::Path) {
    let patience = Duration::from_secs(60);
    let mut deadline = std::time::Instant::now() + patience;
    let mut last = csv_sizes(archive_out);
    loop {
        let expected = csv_sizes(stream_out);
        let got = csv_sizes(archive_out);
        if !expected.is_empty()
            && expected == got
            && csv_files(stream_out) == csv_files(archive_out)
        {
            return;
        }
        if got != last {
            last = got.clone();
            deadline = std::time::Instant::now() + patience;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for the archive's files to equal the stream's (no growth for \
                 {} s): stream {expected:?}, archive {got:?}",
                patience.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `audit-tail archive` whose stderr is read as it is written: left in a pipe nobody
/// reads, its debug log fills the pipe during a long catch-up and stops the archive.
pub struct Archive {
    pub child: std::process::Child,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Archive {
    pub fn spawn(url: &str, out: &std::path::Path) -> Archive {
        use std::io::Read;
        let mut child = archive_command(url, out, &[])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut err = String::new();
            let _ = pipe.read_to_string(&mut err);
            err
        });
        Archive {
            child,
            stderr: Some(stderr),
        }
    }

    /// Stops it with SIGTERM and returns its exit code and stderr.
    pub fn terminate(&mut self) -> (Option<i32>, String) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        let err = self
            .stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        (status.code(), err)
    }
}

impl Drop for Archive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a consumer of the server has a pull request waiting: it has taken everything there
/// was and asks for more.
pub fn consumer_waiting(nats: &audit_tail::nats_server::NatsServer) -> bool {
    let Ok(text) = nats.monitor("/jsz?consumers=true") else {
        return false;
    };
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    json["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .flat_map(|s| s["consumer_detail"].as_array().into_iter().flatten())
        .any(|c| c["num_pending"] == 0 && c["num_waiting"].as_u64().unwrap_or(0) > 0)
}

/// Stops a child with SIGTERM and returns its exit code and what is left of its stderr (nothing
/// when the caller reads it as it goes).
pub fn terminate(child: &mut std::process::Child) -> (Option<i32>, String) {
    use std::io::Read;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    (status.code(), err)
}

/// Whether `stored` holds each database's rows in the order the stream publishes them: commit
/// LSNs non-decreasing, indexes consecutive from 0 within a transaction, every transaction
/// complete (its last row carries the end LSN) before the next begins, and the last one
/// complete. `None` when it does; else what is wrong, at which stream position.
pub fn order_problem(stored: &[Stored]) -> Option<String> {
    use audit_tail::lsn::Lsn;
    // Per database: the last row's commit LSN, index and whether it ended its transaction.
    let mut last: std::collections::HashMap<String, (Lsn, u64, bool)> = Default::default();
    for (n, s) in stored.iter().enumerate() {
        let mut parts = s.id.rsplitn(3, ':');
        let (Some(index), Some(lsn), Some(db)) = (parts.next(), parts.next(), parts.next()) else {
            return Some(format!(
                "message {n}: id {:?} is not <db>:<lsn>:<index>",
                s.id
            ));
        };
        let (Ok(index), Ok(lsn)) = (index.parse::<u64>(), lsn.parse::<Lsn>()) else {
            return Some(format!("message {n}: id {:?} does not parse", s.id));
        };
        let ends = s.end_lsn.is_some();
        let fits = match last.get(db) {
            None => index == 0,
            Some(&(prev, prev_index, prev_ends)) if prev == lsn => {
                !prev_ends && index == prev_index + 1
            }
            Some(&(prev, _, prev_ends)) => prev_ends && prev < lsn && index == 0,
        };
        if !fits {
            return Some(format!(
                "message {n} ({}) does not follow the previous row of its database ({:?}: \
                 commit LSN, index, ended its transaction)",
                s.id,
                last.get(db)
            ));
        }
        last.insert(db.to_string(), (lsn, index, ends));
    }
    last.iter()
        .find(|(_, (_, _, ends))| !ends)
        .map(|(db, at)| format!("the last transaction of {db} is incomplete: {at:?}"))
}

/// How many messages `stream` holds; 0 while NATS or the stream is not there (yet).
pub async fn count_or_zero(url: &str, stream: &str) -> u64 {
    let Ok(client) = async_nats::connect(url).await else {
        return 0;
    };
    let js = jetstream::new(client);
    let Ok(mut stream) = js.get_stream(stream).await else {
        return 0;
    };
    stream.info().await.map(|i| i.state.messages).unwrap_or(0)
}
