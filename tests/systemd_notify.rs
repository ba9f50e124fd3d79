//! `telehub serve` as a `Type=notify` service, against a real notification socket
//! (a Unix datagram socket bound here, as the service manager binds its own): it
//! says READY=1 once its port accepts connections, feeds the watchdog every half
//! `WATCHDOG_USEC`, and says STOPPING=1 when SIGTERM starts its shutdown.

mod common;

use std::{
    net::TcpStream,
    os::unix::net::UnixDatagram,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// The next datagram, within `limit`.
fn next(socket: &UnixDatagram, limit: Duration) -> String {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn serve_tells_the_service_manager_ready_watchdog_and_stopping() {
    let dir = Dir::new("sd");
    let path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let port = free_port();
    let mut hub = Command::new(env!("CARGO_BIN_EXE_telehub"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .arg("--certs-dir")
        .arg(dir.0.join("certs"))
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("telehub serve");

    let ready = next(&socket, Duration::from_secs(30));
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(ready.contains(&format!("STATUS=listening on 127.0.0.1:{port}")));
    TcpStream::connect(("127.0.0.1", port)).expect("listening when it says ready");

    // Every 200 ms: at least three in a second.
    let started = Instant::now();
    let mut fed = 0;
    while started.elapsed() < Duration::from_secs(1) {
        assert_eq!(next(&socket, Duration::from_secs(2)), "WATCHDOG=1");
        fed += 1;
    }
    assert!(fed >= 3, "{fed} watchdog notifications in a second");

    assert!(Command::new("kill")
        .args(["-TERM", &hub.id().to_string()])
        .status()
        .unwrap()
        .success());
    let stopping = loop {
        let s = next(&socket, Duration::from_secs(10));
        if s != "WATCHDOG=1" {
            break s;
        }
    };
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = hub.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the hub did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
