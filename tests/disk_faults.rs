//! Disks that fail: a file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored so writes fail with
//! EFBIG instead of killing the process), a real small filesystem that fills up (an ext4 image on
//! a loop device, or a size-limited tmpfs where loop devices are missing), and fsync failing with
//! EIO (an LD_PRELOAD shim built at test time). Each time the consumer must stop with a clear
//! error that says what to do, keep its checkpoint intact, acknowledge nothing that is not on
//! disk, and complete the files once the disk works again.
//!
//! Mounting needs root, as CI runs; the tests say so and fail when run otherwise.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use audit_tail::checkpoint::Checkpoint;
use audit_tail::lsn::Lsn;
use common::{Consumer, TestDb, assert_files_equal_table, catch_up, stream_command};

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
    assert_acknowledged_only_durable(&db, out.path());

    // Space again: the restart cuts back the partial transaction and completes the files.
    catch_up(&db, out.path());
    assert_eq!(assert_files_equal_table(&db, out.path()).await, 5 + 2000);
}

/// The slot's confirmed position must not pass the stored checkpoint.
fn assert_acknowledged_only_durable(db: &TestDb, out: &Path) -> Checkpoint {
    let checkpoint = Checkpoint::load(out).unwrap().expect("state file");
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
    checkpoint
}

/// A small filesystem mounted on a temporary directory, unmounted on drop.
struct SmallFs {
    mount: tempfile::TempDir,
    _image: tempfile::TempDir,
    kind: &'static str,
}

impl SmallFs {
    fn new(megabytes: u64) -> SmallFs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts a small filesystem and must run as root (CI does: .ci/run)"
        );
        let mount = tempfile::tempdir().unwrap();
        let image_dir = tempfile::tempdir().unwrap();
        let image = image_dir.path().join("fs.img");
        let sh = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(megabytes << 20).unwrap();
        drop(file);
        let ext4 = sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))
            && sh(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(mount.path()));
        let kind = if ext4 {
            "ext4 on a loop device"
        } else {
            assert!(
                sh(Command::new("mount")
                    .args(["-t", "tmpfs", "-o"])
                    .arg(format!("size={megabytes}m"))
                    .arg("tmpfs")
                    .arg(mount.path())),
                "could mount neither an ext4 image nor a tmpfs on {}",
                mount.path().display()
            );
            "tmpfs"
        };
        SmallFs {
            mount,
            _image: image_dir,
            kind,
        }
    }

    fn path(&self) -> &Path {
        self.mount.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_filesystem_stops_cleanly_and_a_restart_completes_the_files() {
    let fs = SmallFs::new(8);
    let out = fs.path().join("out");
    let db = TestDb::new("fs_full");
    db.install();
    catch_up(&db, &out);
    // Ballast leaves room for about 100 KB of rows; the backlog needs about 3 MB.
    let ballast = fs.path().join("ballast");
    let free = nix::sys::statvfs::statvfs(fs.path()).unwrap();
    let free_bytes = free.blocks_available() as u64 * free.fragment_size() as u64;
    std::fs::write(&ballast, vec![7u8; (free_bytes - 100 * 1024) as usize]).unwrap();
    db.psql("INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 10000) g");
    for round in 0..3 {
        db.psql(&format!(
            "UPDATE users SET name = name || ' renamed in round {round}' WHERE id % 3 = {round}"
        ));
    }
    db.psql("UPDATE users SET role = 'admin'");

    let output = stream_command(&db, &out, &["--until", "now", "--format", "none"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{} full: {stderr}", fs.kind);
    assert!(
        stderr.contains("No space left on device") && stderr.contains("free space"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let at_failure = assert_acknowledged_only_durable(&db, &out);
    let total: u64 = db
        .psql("SELECT count(*) FROM users_audit")
        .trim()
        .parse()
        .unwrap();
    assert!(total > 10_000);

    // Space again: the restart cuts back what was not durable and completes the files.
    std::fs::remove_file(&ballast).unwrap();
    catch_up(&db, &out);
    let after = Checkpoint::load(&out).unwrap().unwrap();
    assert!(after.lsn > at_failure.lsn);
    assert_eq!(
        assert_files_equal_table(&db, &out).await as u64,
        total,
        "{}",
        fs.kind
    );
}

/// Builds the fsync-failing shim: fsync and fdatasync fail with EIO while the file named by
/// AUDIT_TAIL_TEST_FAIL_SYNC exists, and work as usual otherwise.
fn failing_sync_shim(dir: &Path) -> PathBuf {
    let source = dir.join("failsync.c");
    std::fs::write(
        &source,
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int failing(void) {
    const char *marker = getenv("AUDIT_TAIL_TEST_FAIL_SYNC");
    return marker && access(marker, F_OK) == 0;
}

int fsync(int fd) {
    if (failing()) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    if (failing()) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
"#,
    )
    .unwrap();
    let shim = dir.join("libfailsync.so");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("run cc to build the fsync shim");
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    shim
}

#[tokio::test(flavor = "multi_thread")]
async fn an_fsync_error_stops_cleanly_and_a_restart_completes_the_files() {
    let db = TestDb::new("fsync_eio");
    db.install();
    let out = tempfile::tempdir().unwrap();
    let tools = tempfile::tempdir().unwrap();
    let shim = failing_sync_shim(tools.path());
    let marker = tools.path().join("fail-now");
    catch_up(&db, out.path());
    db.psql("INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 200) g");

    // A live consumer under the shim: rows stream in and are synced, then the disk goes bad.
    let mut cmd = stream_command(&db, out.path(), &["--format", "none"]);
    cmd.env("LD_PRELOAD", &shim)
        .env("AUDIT_TAIL_TEST_FAIL_SYNC", &marker)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut consumer = Consumer {
        child: cmd.spawn().unwrap(),
    };
    db.psql("UPDATE users SET role = 'first' WHERE id <= 50");
    let synced = std::time::Instant::now();
    loop {
        let checkpoint = Checkpoint::load(out.path()).unwrap().unwrap();
        if checkpoint.files.values().sum::<u64>() > 0 {
            break;
        }
        assert!(
            synced.elapsed().as_secs() < 30,
            "the first rows never became durable"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = Checkpoint::load(out.path()).unwrap().unwrap();
    std::fs::write(&marker, b"").unwrap();
    db.psql("UPDATE users SET role = 'second'");
    let status = consumer.child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(consumer.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Input/output error") && stderr.contains("I/O error: check it"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Nothing of the failed sync reached the checkpoint or the slot.
    let at_failure = assert_acknowledged_only_durable(&db, out.path());
    assert_eq!(at_failure, before);

    // The disk works again: a restart re-fetches what was not durable.
    std::fs::remove_file(&marker).unwrap();
    catch_up(&db, out.path());
    assert_eq!(assert_files_equal_table(&db, out.path()).await, 50 + 200);
}
