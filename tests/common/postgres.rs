//! A throwaway PostgreSQL: Debian's server (`/usr/lib/postgresql/*/bin`), a
//! cluster made by `initdb` in a temp directory, on a free loopback port, with
//! trust authentication for its one user, `telehub`. PostgreSQL refuses to run as
//! root: when the tests run as root, the server runs as `nobody`. `.ci/run`
//! installs the package.
//!
//! [`Postgres::shared`] is one instance per test binary, each test getting a
//! database of its own ([`Postgres::database`]); it stops when the binary exits
//! (a shell beside it waits for its stdin, held by the binary, to close).
//! [`Postgres::start`] is an instance of the test's own, which it can stop and
//! start again; it stops on drop.

use std::{
    io::Read as _,
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use super::hub::temp_dir;

/// `nobody`, who runs the server when the tests run as root.
const NOBODY: u32 = 65534;

pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Closing it stops the server and removes `dir` (the shared instance).
    _stdin: Option<ChildStdin>,
    /// Serving TLS (as well as plain TCP) with this certificate and key.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Postgres {
    /// The instance every test of this binary shares (started on first use).
    pub fn shared() -> &'static Mutex<Postgres> {
        static SHARED: OnceLock<Mutex<Postgres>> = OnceLock::new();
        SHARED.get_or_init(|| Mutex::new(Postgres::start()))
    }

    /// The shared instance's URL for a new, empty database.
    pub async fn shared_database() -> String {
        let port = Self::shared()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .port;
        database_on(port).await
    }

    /// An instance of the caller's own, running, stopped on drop.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// An instance of the caller's own that also serves TLS, with a hub's
    /// development certificate in `certs` (`server.pem`, `server.key`: localhost
    /// and 127.0.0.1).
    pub fn start_tls(certs: &std::path::Path) -> Self {
        Self::start_with(Some(certs))
    }

    fn start_with(certs: Option<&std::path::Path>) -> Self {
        let dir = temp_dir("postgres");
        let data = dir.join("data");
        as_server_user(&dir);
        let bin = bin_dir();
        let out = server_command(&bin.join("initdb"))
            .args([
                "--no-locale",
                "-E",
                "UTF8",
                "-A",
                "trust",
                "-U",
                "telehub",
                "-N",
                "-D",
            ])
            .arg(&data)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .output()
            .expect("running initdb (is Debian's postgresql installed?)");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = super::redis::server_port();
        // The server reads its key only if its own user alone may.
        let tls = certs.map(|certs| {
            let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
            std::fs::copy(certs.join("server.pem"), &cert).expect("copying the certificate");
            std::fs::copy(certs.join("server.key"), &key).expect("copying the key");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod of the key");
            as_server_user(&cert);
            as_server_user(&key);
            (cert, key)
        });
        let mut pg = Postgres {
            port,
            dir,
            child: None,
            _stdin: None,
            tls,
        };
        pg.resume();
        pg
    }

    /// `postgres://telehub:secret@127.0.0.1:PORT/DB` (the password is not
    /// checked: trust authentication).
    pub fn url(&self, db: &str) -> String {
        url(self.port, db)
    }

    /// A new, empty database on this instance.
    pub async fn database(&self) -> String {
        database_on(self.port).await
    }

    /// Stops the server at once (SIGKILL of the postmaster and every backend: no
    /// goodbye to its clients), as a crash or a lost host would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The postmaster's process group: it and every backend.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        // A killed postmaster leaves its pid file; the next start checks it.
        let _ = std::fs::remove_file(self.dir.join("data/postmaster.pid"));
    }

    /// Starts the server (again) on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "postgres is running");
        let postgres = bin_dir().join("postgres");
        // The shell stops the server when its stdin closes (this process ended),
        // then removes the data: nothing outlives the test binary.
        let tls = match &self.tls {
            Some((cert, key)) => format!(
                "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let script = format!(
            "{} -D {data} -p {port} -c listen_addresses=127.0.0.1 -k {dir} {tls} \
             -c max_connections=400 -c fsync=off -c full_page_writes=off & pid=$!; \
             cat >/dev/null; kill -INT $pid; wait $pid; rm -rf {dir}",
            postgres.display(),
            data = self.dir.join("data").display(),
            dir = self.dir.display(),
            port = self.port,
        );
        let mut child = server_command(std::path::Path::new("sh"))
            .args(["-c", &script])
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("starting postgres");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("postgres exited ({status}): {err}");
            }
            assert!(Instant::now() < deadline, "postgres did not listen in 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        self._stdin = child.stdin.take();
        self.child = Some(child);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self._stdin = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn url(port: u16, db: &str) -> String {
    format!("postgres://telehub:secret@127.0.0.1:{port}/{db}")
}

/// Creates a new database on the instance at `port`, once it accepts
/// connections (it may still be starting).
async fn database_on(port: u16) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio_postgres::connect(&url(port, "postgres"), tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("CREATE DATABASE");
                return url(port, &name);
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("postgres on {port} does not answer: {e}"),
        }
    }
}

/// The server binaries of the newest PostgreSQL installed.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql: is Debian's postgresql installed? (.ci/run installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().expect("no postgres under /usr/lib/postgresql")
}

fn is_root() -> bool {
    // The owner of this process's own /proc entry is its effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A command that runs as `nobody` when the tests run as root.
fn server_command(program: &std::path::Path) -> Command {
    let mut cmd = Command::new(program);
    if is_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    cmd
}

/// Gives `path` to the server's user.
fn as_server_user(path: &std::path::Path) {
    if is_root() {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).expect("chown for postgres");
    }
}
