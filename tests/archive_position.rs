//! `audit-tail archive`: the out-dir is the truth. It resumes from the stream sequence after its
//! own files' last, not from the NATS consumer's acknowledgements; a consumer of another out-dir
//! is refused; one out-dir holds one database, with one filter.

mod common;
mod nats_support;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use audit_tail::nats_server::{NatsServer, NatsServerOptions};
use common::{TestDb, stream_command};
use nats_support::{archive_command, catch_up_with_nats, csv_files, wait_same_files};

/// Some rows in `db`, published.
fn more_rows(db: &TestDb, out: &Path, url: &str, role: &str) {
    db.psql(&format!(
        "INSERT INTO users (name, role) SELECT 'u' || g, '{role}' FROM generate_series(1, 40) g"
    ));
    db.psql(&format!(
        "UPDATE users SET role = '{role}-2' WHERE role = '{role}'"
    ));
    catch_up_with_nats(db, out, url);
}

/// Starts an archive whose stderr is collected as it goes.
fn spawn(url: &str, out: &Path, extra: &[&str]) -> (Child, std::thread::JoinHandle<String>) {
    let mut child = archive_command(url, out, extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    (child, log)
}

/// Runs an archive that must stop by itself: its exit code and stderr.
fn run_to_exit(url: &str, out: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let (mut child, log) = spawn(url, out, extra);
    let mut status = None;
    common::wait::until("the archive to exit", Duration::from_secs(60), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    (status.unwrap().code(), log.join().unwrap())
}

/// Stops an archive with SIGTERM: its exit code and stderr.
fn stop(mut child: Child, log: std::thread::JoinHandle<String>) -> (Option<i32>, String) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    (status.code(), log.join().unwrap())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_out_dir_on_the_same_consumer_is_refused_and_the_first_loses_nothing() {
    let nats = NatsServer::start().expect("start nats-server");
    let db = TestDb::new("archive_two_dirs");
    let stream_out = tempfile::tempdir().unwrap();
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    db.install();
    catch_up_with_nats(&db, stream_out.path(), &nats.url());
    more_rows(&db, stream_out.path(), &nats.url(), "one");
    let (a, a_log) = spawn(&nats.url(), first.path(), &[]);
    wait_same_files(stream_out.path(), first.path());

    // The same (default) consumer name for another out-dir: refused at once, naming both.
    let (code, stderr) = run_to_exit(&nats.url(), second.path(), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is not this archive's to use"), "{stderr}");
    assert!(stderr.contains("belongs to another out-dir"), "{stderr}");
    let first_dir = std::path::absolute(first.path()).unwrap();
    let second_dir = std::path::absolute(second.path()).unwrap();
    assert!(
        stderr.contains(&first_dir.display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains(&second_dir.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("--nats-consumer"), "{stderr}");
    assert!(csv_files(second.path()).is_empty(), "{stderr}");

    // The first goes on with every row.
    more_rows(&db, stream_out.path(), &nats.url(), "two");
    wait_same_files(stream_out.path(), first.path());
    let (code, stderr) = stop(a, a_log);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("reconnecting"), "{stderr}");

    // The second, under a name of its own, reads every row from the stream's first.
    let (b, b_log) = spawn(&nats.url(), second.path(), &["--nats-consumer", "second"]);
    wait_same_files(stream_out.path(), second.path());
    let (code, stderr) = stop(b, b_log);
    assert_eq!(code, Some(0), "{stderr}");
    let rows = common::assert_files_equal_table(&db, second.path()).await;
    assert!(rows >= 80, "{rows}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_out_dir_restored_from_an_older_copy_reads_again_from_where_its_files_end() {
    let nats = NatsServer::start().expect("start nats-server");
    let db = TestDb::new("archive_restored");
    let stream_out = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    db.install();
    catch_up_with_nats(&db, stream_out.path(), &nats.url());
    more_rows(&db, stream_out.path(), &nats.url(), "one");
    let (a, log) = spawn(&nats.url(), archive.path(), &[]);
    wait_same_files(stream_out.path(), archive.path());
    let (code, stderr) = stop(a, log);
    assert_eq!(code, Some(0), "{stderr}");
    copy_dir(archive.path(), &backup.path().join("copy"));

    // More rows, archived and acknowledged: the consumer's floor moves past the copy's end.
    more_rows(&db, stream_out.path(), &nats.url(), "two");
    let (a, log) = spawn(&nats.url(), archive.path(), &[]);
    wait_same_files(stream_out.path(), archive.path());
    let (code, stderr) = stop(a, log);
    assert_eq!(code, Some(0), "{stderr}");

    // The older copy comes back: it reads from its own end, not from the consumer's floor.
    std::fs::remove_dir_all(archive.path()).unwrap();
    copy_dir(&backup.path().join("copy"), archive.path());
    more_rows(&db, stream_out.path(), &nats.url(), "three");
    let (a, log) = spawn(&nats.url(), archive.path(), &[]);
    wait_same_files(stream_out.path(), archive.path());
    let (code, stderr) = stop(a, log);
    assert_eq!(code, Some(0), "{stderr}");
    let rows = common::assert_files_equal_table(&db, archive.path()).await;
    assert!(rows >= 120, "{rows}");

    // An emptied out-dir (a machine rebuilt) on the old consumer is refused, not started at the
    // consumer's floor; the message says how to go on.
    std::fs::remove_dir_all(archive.path()).unwrap();
    let (code, stderr) = run_to_exit(&nats.url(), archive.path(), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("belongs to another out-dir"), "{stderr}");
    assert!(stderr.contains("nats consumer rm"), "{stderr}");
    assert!(csv_files(archive.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_out_dir_holds_one_database_and_keeps_its_filter() {
    let nats = NatsServer::start().expect("start nats-server");
    let one = TestDb::new("archive_db_one");
    let two = TestDb::new("archive_db_two");
    let (one_out, two_out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    one.install();
    two.install();
    catch_up_with_nats(&one, one_out.path(), &nats.url());
    more_rows(&one, one_out.path(), &nats.url(), "one");
    catch_up_with_nats(&two, two_out.path(), &nats.url());
    more_rows(&two, two_out.path(), &nats.url(), "two");
    more_rows(&one, one_out.path(), &nats.url(), "three");

    // No filter: the stream's first row names the database, and only its rows are archived.
    let derived = tempfile::tempdir().unwrap();
    let (a, log) = spawn(&nats.url(), derived.path(), &[]);
    wait_same_files(one_out.path(), derived.path());
    let (code, stderr) = stop(a, log);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("no --nats-filter: this out-dir archives the database"),
        "{stderr}"
    );
    let filter_one = format!("audit.{}.>", one.name);
    assert!(stderr.contains(&filter_one), "{stderr}");
    common::assert_files_equal_table(&one, derived.path()).await;

    // Its filter is kept: another one on the same out-dir is refused (usage, exit 2).
    let filter_two = format!("audit.{}.>", two.name);
    let (code, stderr) = run_to_exit(
        &nats.url(),
        derived.path(),
        &["--nats-filter", &filter_two, "--nats-consumer", "other"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("differs from"), "{stderr}");
    assert!(stderr.contains(&filter_one), "{stderr}");
    assert_eq!(csv_files(one_out.path()), csv_files(derived.path()));

    // A filter over both databases: the first row of the second is refused before it is written.
    let mixed = tempfile::tempdir().unwrap();
    let (code, stderr) = run_to_exit(
        &nats.url(),
        mixed.path(),
        &["--nats-filter", "audit.>", "--nats-consumer", "mixed"],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("is a row of database {}", two.name)),
        "{stderr}"
    );
    assert!(
        stderr.contains("--nats-filter <prefix>.<database>.>"),
        "{stderr}"
    );
    let files = csv_files(mixed.path());
    let written: usize = files.values().map(|b| b.len()).sum();
    assert!(written > 0, "the first database's rows before it are kept");
    for bytes in files.values() {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains("two-2"),
            "a row of the other database: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_leave_no_out_dir_and_a_filter_matching_nothing_says_so() {
    let nats = NatsServer::start_with(NatsServerOptions {
        config: "authorization { user: audit, password: right-one }".into(),
        ..Default::default()
    })
    .expect("start nats-server");
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("archive");
    let (code, stderr) = run_to_exit(
        &nats.url(),
        &out,
        &["--nats-user", "audit", "--nats-password", "wrong-one"],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        !out.exists(),
        "no out-dir for an archive NATS refused: {stderr}"
    );

    let db = TestDb::new("archive_no_match");
    let stream_out = tempfile::tempdir().unwrap();
    db.install();
    let creds = ["--nats-user", "audit", "--nats-password", "right-one"];
    let mut args = vec!["--until", "now", "--format", "none", "--nats"];
    let url = nats.url();
    args.push(&url);
    args.extend(creds);
    let published = stream_command(&db, stream_out.path(), &args)
        .output()
        .unwrap();
    assert!(published.status.success());
    db.psql("INSERT INTO users (name, role) VALUES ('a', 'user')");
    db.psql("UPDATE users SET role = 'b'");
    let published = stream_command(&db, stream_out.path(), &args)
        .output()
        .unwrap();
    assert!(published.status.success());
    let mut extra = vec!["--nats-filter", "audit.db9.>"];
    extra.extend(creds);
    let (child, log) = spawn(&nats.url(), &out, &extra);
    common::wait::until(
        "the archive to read its consumer",
        Duration::from_secs(30),
        || nats_support::consumer_waiting(&nats),
    );
    let (code, stderr) = stop(child, log);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("nothing in the stream matches --nats-filter yet"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("audit.{}.public.users_audit", db.name)),
        "the subjects the stream holds are named: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_another_process_is_reading_is_refused() {
    use async_nats::jetstream::{self, consumer};
    use futures_util::StreamExt;
    let nats = NatsServer::start().expect("start nats-server");
    let db = TestDb::new("archive_busy");
    let stream_out = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    db.install();
    catch_up_with_nats(&db, stream_out.path(), &nats.url());
    more_rows(&db, stream_out.path(), &nats.url(), "one");

    // A consumer of that name made otherwise (an older audit-tail, by hand), which a process
    // keeps pulling from.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.get_stream("AUDIT").await.expect("the stream exists");
    let theirs: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("shared".into()),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut messages = theirs
            .stream()
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .unwrap();
        while messages.next().await.is_some() {}
    });
    common::wait::until(
        "the other process to wait on the consumer",
        Duration::from_secs(30),
        || nats_support::consumer_waiting(&nats),
    );
    let (code, stderr) = run_to_exit(&nats.url(), archive.path(), &["--nats-consumer", "shared"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("another process is reading it"), "{stderr}");
    assert!(
        stderr.contains("made by an older audit-tail or by hand"),
        "{stderr}"
    );
    assert!(csv_files(archive.path()).is_empty());

    // Once nobody reads it, it is taken over and every row archived.
    reader.abort();
    let _ = reader.await;
    drop(stream);
    drop(js);
    let (a, log) = spawn(&nats.url(), archive.path(), &["--nats-consumer", "shared"]);
    wait_same_files(stream_out.path(), archive.path());
    let (code, stderr) = stop(a, log);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("taking over a consumer made by an older audit-tail"),
        "{stderr}"
    );
}
