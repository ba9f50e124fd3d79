"""A real hub for the tests: `$TELEHUB_BIN serve` on 127.0.0.1 over TLS, in a temp
dir, with tokens from `$TELEHUB_BIN token` and the REST API over https.

tests/client_python.rs runs this suite with TELEHUB_BIN set to the binary cargo
built. The suite tests the *installed* package (the venv's `telehub`), so the
fixture first checks that it is the one in this source tree.
"""

from __future__ import annotations

import asyncio
import filecmp
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Coroutine, Dict, List, Optional, TypeVar

import pytest

import telehub

T = TypeVar("T")

#: Bound on one test's coroutine.
TEST_TIMEOUT = 45.0
#: Bound on a hub's start (the first one generates the certificates).
START_TIMEOUT = 30.0

SOURCE = Path(__file__).resolve().parent.parent / "src" / "telehub"


def run(coro: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT) -> T:
    """Runs one test's coroutine on a fresh event loop, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    """One hub process; `restart` starts another on the same port and data dir."""

    #: Hubs the running test uses (their logs go into a failure's report).
    used: List["Hub"] = []

    def __init__(self, root: Path, args: List[str], config: Optional[str] = None) -> None:
        self.bin = os.environ.get("TELEHUB_BIN")
        if not self.bin:
            raise RuntimeError("TELEHUB_BIN is not set: run this suite through `cargo test --test client_python`")
        self.root = root
        self.data_dir = root / "data"
        self.certs_dir = root / "certs"
        self.port = free_port()
        self.args = list(args)
        if config is not None:
            path = root / "telehub.toml"
            path.write_text(config)
            self.args += ["--config", str(path)]
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0
        self.shared = False
        Hub.used.append(self)
        self.start()
        self.ca = str(self.certs_dir / "ca.pem")
        self.tls = ssl.create_default_context(cafile=self.ca)

    @property
    def url(self) -> str:
        # 127.0.0.1: the hub listens there, and the development certificate names it.
        return f"wss://127.0.0.1:{self.port}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        log = open(self.root / f"hub-{self.starts}.log", "wb")
        cmd = [
            self.bin,
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.data_dir),
            "--certs-dir",
            str(self.certs_dir),
            *self.args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the hub exited with {self.proc.returncode}:\n{self.log()}")
            ca = self.certs_dir / "ca.pem"
            if ca.exists():
                try:
                    ctx = ssl.create_default_context(cafile=str(ca))
                    with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/readyz", context=ctx, timeout=2) as r:
                        if r.status == 200:
                            return
                except (OSError, ssl.SSLError, urllib.error.URLError):
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the hub was not ready within {START_TIMEOUT} s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stops the hub (SIGTERM: it closes every connection with 1001 and exits)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        parts = []
        for p in sorted(self.root.glob("hub-*.log")):
            parts.append(f"--- {p.name}\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def token(self, role: str, subject: str, *extra: str) -> str:
        out = subprocess.run(
            [
                self.bin,
                "token",
                "--data-dir",
                str(self.data_dir),
                "--role",
                role,
                "--subject",
                subject,
                "--ttl",
                "1h",
                *extra,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return out.stdout.decode().strip()

    def rest(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """A REST call with an operator token; returns the JSON answer."""
        if not hasattr(self, "_operator"):
            self._operator = self.token("operator", "pytest-operator")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.https}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self._operator}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, context=self.tls, timeout=10) as r:
            return json.loads(r.read())

    def device(self, subject: str, **options: Any) -> telehub.Device:
        options.setdefault("ca_file", self.ca)
        options.setdefault("backoff", FAST)
        return telehub.Device(self.url, self.token("device", subject), **options)

    def dashboard(self, **options: Any) -> telehub.Dashboard:
        options.setdefault("ca_file", self.ca)
        options.setdefault("backoff", FAST)
        return telehub.Dashboard(self.url, self.token("viewer", "pytest-viewer"), **options)


async def rest(hub: Hub, method: str, path: str, body: Any = None) -> Dict[str, Any]:
    """`Hub.rest` off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, hub.rest, method, path, body)


async def notify(hub: Hub, device_id: str, severity: str = "critical", **extra: Any) -> str:
    """Pushes a notification to one device through the REST API; returns its id."""
    body = {"targets": {"device_ids": [device_id]}, "severity": severity, "title": "Firmware recall", "ttl": "5m"}
    body.update(extra)
    created = await rest(hub, "POST", "/v1/notifications", body)
    return created["id"]


async def device_state(hub: Hub, notification_id: str, device_id: str, want: str, timeout: float = 10.0) -> Dict[str, Any]:
    """Polls the notification's status until the device's state is `want`."""
    deadline = time.monotonic() + timeout
    while True:
        status = await rest(hub, "GET", f"/v1/notifications/{notification_id}")
        states = {d["device_id"]: d for d in status["devices"]}
        if states.get(device_id, {}).get("state") == want:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"{device_id} not {want}: {status}")
        await asyncio.sleep(0.05)


#: Short back-off for tests, where the hub restarts within a second.
FAST = telehub.Backoff(initial=0.1, maximum=1.0)


def pytest_sessionstart(session: pytest.Session) -> None:
    """The venv's telehub must be the package in src/ (`bash .ci/run` installs it):
    otherwise nothing runs."""
    installed = Path(telehub.__file__).resolve().parent
    if installed == SOURCE:
        return
    names = sorted(p.name for p in SOURCE.iterdir() if p.is_file())
    _, mismatch, missing = filecmp.cmpfiles(SOURCE, installed, names, shallow=False)
    if mismatch or missing:
        pytest.exit(
            f"the installed telehub ({installed}) differs from {SOURCE} in {mismatch + missing}: "
            "run `bash .ci/run` (its Python device library step reinstalls it)",
            returncode=3,
        )


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory):
    """A hub shared by the tests that do not restart or reconfigure it."""
    h = Hub(tmp_path_factory.mktemp("hub"), [])
    h.shared = True
    yield h
    h.stop()


@pytest.fixture
def make_hub(tmp_path_factory: pytest.TempPathFactory):
    """Starts hubs of a test's own (flags, configuration), stopped after it."""
    hubs: List[Hub] = []

    def make(*args: str, config: Optional[str] = None, setup: Optional[Callable[[Path], None]] = None) -> Hub:
        """`config` (TOML) may name the hub's dir as {root}; `setup(root)` runs
        before the hub starts."""
        root = tmp_path_factory.mktemp("hub")
        if setup is not None:
            setup(root)
        h = Hub(root, list(args), config.replace("{root}", str(root)) if config is not None else None)
        hubs.append(h)
        return h

    yield make
    for h in hubs:
        h.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """On a failure, adds the logs of the hubs the test used to its report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for h in Hub.used:
            report.sections.append((f"hub {h.root.name}", h.log()))


@pytest.fixture(autouse=True)
def _hubs_of_this_test():
    Hub.used = [h for h in Hub.used if h.shared]
    yield
