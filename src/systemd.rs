//! The service manager's readiness protocol (`sd_notify(3)`), spoken directly: a
//! `Type=notify` unit sets `NOTIFY_SOCKET`, and the hub sends it `READY=1` once it
//! listens, `STOPPING=1` when shutdown starts, and `WATCHDOG=1` every half
//! `WATCHDOG_USEC` while it runs (when the unit sets `WatchdogSec=`). Each is one
//! datagram to a Unix socket, named by a path or, with a leading `@`, in Linux's
//! abstract namespace.
//!
//! Without `NOTIFY_SOCKET` nothing is sent. A send that fails is logged, never
//! fatal: the hub serves the same with or without a service manager.

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; `None` when it is unset or unusable (logged).
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let name = name.to_string_lossy();
        match Self::open(&name) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(socket = %name, error = %e, "NOTIFY_SOCKET is set but unusable: the service manager will not hear from the hub");
                None
            }
        }
    }

    fn open(name: &str) -> std::io::Result<Notifier> {
        let addr = match name.strip_prefix('@') {
            #[cfg(target_os = "linux")]
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())?
            }
            #[cfg(not(target_os = "linux"))]
            Some(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "abstract socket names exist on Linux only",
                ))
            }
            None => SocketAddr::from_pathname(name)?,
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            addr,
        })
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines).
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!(error = %e, state, "telling the service manager failed");
        }
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when it is set
    /// for this process (`WATCHDOG_PID` unset, or ours).
    pub fn watchdog_interval() -> Option<Duration> {
        if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
            if pid.to_string_lossy().parse::<u32>().ok() != Some(std::process::id()) {
                return None;
            }
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("telehub-sd-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        Notifier::open(path.to_str().unwrap())
            .unwrap()
            .send("READY=1\nSTATUS=listening");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=listening");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
