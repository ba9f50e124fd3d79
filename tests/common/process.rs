//! Child processes the tests run (scripts, clients): reading their output.

use std::{io::Read, thread::JoinHandle};

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
