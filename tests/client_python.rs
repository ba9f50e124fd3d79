//! The Python device library (`clients/python`, importable as `telehub`) against
//! real hubs: its pytest suite (`clients/python/tests`) runs with the interop venv's
//! Python, and starts its own hubs from the binary cargo built (`TELEHUB_BIN`) on
//! 127.0.0.1 over TLS: telemetry from a device to a dashboard, confirmations,
//! buffering, rate-limit resends, a hub restart mid-stream, notifications acked
//! once, the spool across a process restart.
//!
//! The package builds its protobuf classes from a committed `FileDescriptorSet`
//! (`clients/python/src/telehub/telehub.desc`); the first test checks that it is
//! byte for byte the hub's, compiled from `proto/`. After a change to the proto,
//! `TELEHUB_UPDATE_DESCRIPTOR=1 cargo test --test client_python` rewrites it.
//!
//! The venv (`target/interop-venv`, with pytest and the library installed from
//! this tree) is made by `.ci/run`; without it the suite fails, never skips.

mod common;

use std::{
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::{drain, Dir};

/// Bound on the whole pytest run (it takes some 20 s; each test bounds its waits).
const PYTEST_TIMEOUT: Duration = Duration::from_secs(240);
/// What to do when the venv or the package is missing or stale.
const INSTALL_HINT: &str = "run `bash .ci/run`: it creates the venv target/interop-venv \
     from tests/interop/requirements.txt (pytest included) and installs clients/python into it";

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_packaged_descriptor_is_the_hubs() {
    let path = manifest().join("clients/python/src/telehub/telehub.desc");
    let committed = std::fs::read(&path).unwrap_or_default();
    if committed == telehub::proto::FILE_DESCRIPTOR_SET {
        return;
    }
    if std::env::var_os("TELEHUB_UPDATE_DESCRIPTOR").is_some() {
        std::fs::write(&path, telehub::proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        eprintln!("rewrote {}", path.display());
        return;
    }
    panic!(
        "{} ({} bytes) is not the FileDescriptorSet compiled from proto/ ({} bytes): \
         rewrite it with `TELEHUB_UPDATE_DESCRIPTOR=1 cargo test --test client_python`",
        path.display(),
        committed.len(),
        telehub::proto::FILE_DESCRIPTOR_SET.len()
    );
}

#[test]
fn the_pytest_suite_passes_against_real_hubs() {
    let python = common::interop_python();
    let probe = Command::new(&python)
        .args(["-c", "import pytest, telehub"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}; {INSTALL_HINT}", python.display()));
    assert!(
        probe.status.success(),
        "pytest or telehub is not installed in {}: {INSTALL_HINT}\n{}",
        python.display(),
        String::from_utf8_lossy(&probe.stderr)
    );

    // pytest's files: hubs' data and certificates, spools.
    let scratch = Dir::new("client-python");
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pytest", "clients/python/tests", "-q", "-rfEs"])
        // Nothing written into the source tree: no .pytest_cache, no __pycache__.
        .args(["-p", "no:cacheprovider", "--basetemp"])
        .arg(scratch.0.join("pytest"))
        .current_dir(manifest())
        .env("TELEHUB_BIN", env!("CARGO_BIN_EXE_telehub"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so an overrun kills the hubs it started too.
        .process_group(0);
    let started = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting pytest: {e}; {INSTALL_HINT}"));
    let mut run = Group(child);
    let stdout = drain(run.0.stdout.take());
    let stderr = drain(run.0.stderr.take());
    let status = loop {
        if let Some(status) = run.0.try_wait().expect("polling pytest") {
            break Some(status);
        }
        if started.elapsed() >= PYTEST_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(run);
    let join = |h: JoinHandle<String>| h.join().expect("pipe reader panicked");
    let (stdout, stderr) = (join(stdout), join(stderr));
    eprintln!("pytest took {:?}\n{stdout}{stderr}", started.elapsed());
    let status = status
        .unwrap_or_else(|| panic!("pytest did not finish within {PYTEST_TIMEOUT:?}; output above"));
    assert!(status.success(), "pytest failed ({status}); output above");
    let summary = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(
        summary.contains(" passed")
            && !summary.contains("skipped")
            && !summary.contains("deselected"),
        "every test must run and pass: {summary}"
    );
}

/// The pytest process (and its process group), killed if still running when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0.id())])
                .status();
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}
