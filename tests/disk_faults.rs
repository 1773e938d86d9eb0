//! A disk that refuses writes: the consumer runs under a file-size limit (RLIMIT_FSIZE, with
//! SIGXFSZ ignored so writes fail with EFBIG instead of killing it), as a small filesystem would
//! refuse them. It must stop with a clear error, keep its checkpoint intact, acknowledge nothing
//! that is not on disk, and complete the files once it may write again.

mod common;

use std::os::unix::process::CommandExt;

use audit_tail::checkpoint::Checkpoint;
use audit_tail::lsn::Lsn;
use common::{TestDb, assert_files_equal_table, catch_up, stream_command};

#[tokio::test(flavor = "multi_thread")]
async fn a_write_error_stops_cleanly_and_a_restart_completes_the_files() {
    let db = TestDb::new("disk_full");
    db.install();
    let out = tempfile::tempdir().unwrap();
    catch_up(&db, out.path());
    db.psql("INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 1000) g");
    // A first small transaction fits; the bulk one after it does not.
    db.psql("UPDATE users SET role = 'r' WHERE id <= 5");
    db.psql("UPDATE users SET name = name || ' with a longer name', role = 'admin'");

    let mut cmd = stream_command(&db, out.path(), &["--until", "now", "--format", "none"]);
    unsafe {
        cmd.pre_exec(|| {
            use nix::sys::resource::{Resource, setrlimit};
            use nix::sys::signal::{SigHandler, Signal, signal};
            setrlimit(Resource::RLIMIT_FSIZE, 16 * 1024, 16 * 1024)?;
            signal(Signal::SIGXFSZ, SigHandler::SigIgn)?;
            Ok(())
        });
    }
    let output = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("could not write") && stderr.contains("File too large"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The checkpoint is intact and the slot was acknowledged no further than it.
    let checkpoint = Checkpoint::load(out.path()).unwrap().expect("state file");
    let confirmed: Lsn = db
        .psql(&format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
            db.name
        ))
        .trim()
        .parse()
        .unwrap();
    assert!(
        confirmed <= checkpoint.lsn,
        "acknowledged {confirmed} beyond the durable {}",
        checkpoint.lsn
    );

    // Space again: the restart cuts back the partial transaction and completes the files.
    catch_up(&db, out.path());
    assert_eq!(assert_files_equal_table(&db, out.path()).await, 5 + 2000);
}
