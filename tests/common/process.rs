//! Child processes the tests run (scripts, clients): reading their output.

use std::{io::Read, path::PathBuf, thread::JoinHandle};

/// Reads a child's piped stdout or stderr to its end on a thread of its own, so a
/// child filling one pipe never blocks while the test waits on the other.
pub fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    let mut pipe = pipe.expect("a piped stdio stream");
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = pipe.read_to_string(&mut out);
        out
    })
}

/// The interop venv's Python (`target/interop-venv`, or `$TELEHUB_INTEROP_PYTHON`),
/// where `.ci/run` installs `tests/interop/requirements.txt` (and the Python client
/// library); a test that needs it fails, never skips, when it is missing.
pub fn interop_python() -> PathBuf {
    let python = std::env::var_os("TELEHUB_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/interop-venv/bin/python")
        });
    assert!(
        python.exists(),
        "no {}: run `bash .ci/run` (it creates that venv from tests/interop/requirements.txt)",
        python.display()
    );
    python
}
