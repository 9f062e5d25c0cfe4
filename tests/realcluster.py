"""A real Dask cluster for tests: a ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1.

The test suite's other clusters live partly inside the test process (daskgen's embedded cluster,
``LocalCluster``); the tests that kill workers, kill the scheduler or connect over TLS need the
processes a user would run by hand, which the test can kill by pid::

    with start_cluster(tmp_path / "cluster") as cluster:
        daskgen.init(address=cluster.address)
        ...
        cluster.kill_worker(pid)

Each process is started in its own session (``start_new_session``), so it is its own process
group; teardown kills each whole group, whatever the test did, and only those groups.

Workers run with ``--no-nanny``: a ``dask worker`` process is then the worker itself, so the pid
a task reports (``os.getpid()``) is the process the test started and kills, and a SIGKILLed
worker stays dead. With a nanny, the nanny would restart the killed worker a second or two later:
a re-run could land on either worker and the cluster's shape would change under the test.

Functions that run on these workers must be pickled by value (defined inside a function, or in a
driver's ``__main__``): the workers cannot import the test modules, like on a real cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASK = str(Path(sys.executable).with_name("dask"))
STARTUP = 60  # seconds: bound on the scheduler writing its file and the workers registering
HANG = 60  # seconds: a generous bound on every get/wait that only catches hangs


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Bounded polling for things with no event to wait on (files written by other processes,
    the scheduler's state settling after an asynchronous release)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.02)


@dataclass
class TLSFiles:
    """A CA and one certificate/key pair it signed (used by the scheduler, workers and client)."""

    ca_file: Path
    cert: Path
    key: Path

    def cli_flags(self) -> list[str]:
        return [
            "--tls-ca-file",
            str(self.ca_file),
            "--tls-cert",
            str(self.cert),
            "--tls-key",
            str(self.key),
        ]

    def security(self) -> Any:
        from distributed.security import Security

        return Security(
            tls_ca_file=str(self.ca_file),
            tls_client_cert=str(self.cert),
            tls_client_key=str(self.key),
            require_encryption=True,
        )


def make_certificates(directory: Path, openssl: str = "openssl") -> TLSFiles:
    """A throw-away CA and a certificate for 127.0.0.1, made with the ``openssl`` CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_pem = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "node.key", directory / "node.csr", directory / "node.pem"
    ext = directory / "node.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )

    def run(flags: str, *paths: str) -> None:
        args = [openssl, *flags.split(), *paths]
        subprocess.run(args, check=True, capture_output=True, timeout=60)

    ca_flags = "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=daskgen-test-ca"
    run(ca_flags, "-keyout", str(ca_key), "-out", str(ca_pem))
    run("req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    run(
        "x509 -req -CAcreateserial -days 2",
        "-in",
        str(csr),
        "-CA",
        str(ca_pem),
        "-CAkey",
        str(ca_key),
        "-out",
        str(cert),
        "-extfile",
        str(ext),
    )
    return TLSFiles(ca_pem, cert, key)


def _cluster_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DASKGEN_ADDRESS", None)
    # The workers must not import the tests: functions reach them by value, as on a real cluster.
    env.pop("PYTHONPATH", None)
    env.update(extra or {})
    return env


@dataclass
class RealCluster:
    directory: Path
    tls: TLSFiles | None = None
    env: dict[str, str] = field(default_factory=dict)
    address: str = ""
    scheduler: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    _procs: list[tuple[subprocess.Popen, Path]] = field(default_factory=list)

    # -- processes --------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.directory / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [DASK, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
                env=_cluster_env(self.env),
                start_new_session=True,  # its own process group: teardown kills exactly it
            )
        self._procs.append((proc, log))
        return proc

    def start_scheduler(self) -> None:
        scheduler_file = self.directory / "scheduler.json"
        args = ["scheduler", "--host", "127.0.0.1", "--port", "0"]
        args += ["--scheduler-file", str(scheduler_file), "--dashboard-address", ":0"]
        if self.tls is not None:
            args += ["--protocol", "tls", *self.tls.cli_flags()]
        self.scheduler = self._spawn("scheduler", args)

        def address() -> str | None:
            if self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited early:\n{self.logs()}")
            try:
                return json.loads(scheduler_file.read_text())["address"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                return None

        self.address = wait_until(address, "the scheduler wrote its address", STARTUP)

    def start_worker(self) -> subprocess.Popen:
        n = len(self.workers)
        local = self.directory / f"worker-{n}"
        local.mkdir(exist_ok=True)
        args = ["worker", self.address, "--nthreads", "1", "--nworkers", "1", "--no-nanny"]
        args += ["--resources", "CPU=1", "--host", "127.0.0.1", "--local-directory", str(local)]
        if self.tls is not None:
            args += self.tls.cli_flags()
        proc = self._spawn(f"worker-{n}", args)
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, n: int) -> None:
        with self.client() as client:
            try:
                client.wait_for_workers(n, timeout=STARTUP)
            except TimeoutError as exc:
                raise RuntimeError(f"{n} workers did not register:\n{self.logs()}") from exc

    @contextlib.contextmanager
    def client(self, **kwargs: Any) -> Iterator[Any]:
        """A plain ``distributed.Client`` of the test's own (not daskgen's), for observing."""
        from distributed import Client

        if self.tls is not None:
            kwargs.setdefault("security", self.tls.security())
        with Client(self.address, timeout=STARTUP, **kwargs) as client:
            yield client

    def worker_pids(self) -> set[int]:
        return {p.pid for p in self.workers if p.poll() is None}

    def kill_worker(self, pid: int) -> None:
        """SIGKILL the worker with this pid: only ever one this cluster started."""
        procs = [p for p in self.workers if p.pid == pid]
        assert procs, f"pid {pid} is not one of this cluster's workers {self.worker_pids()}"
        os.killpg(pid, signal.SIGKILL)
        procs[0].wait(timeout=HANG)

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        os.killpg(self.scheduler.pid, signal.SIGKILL)
        self.scheduler.wait(timeout=HANG)

    def close(self) -> None:
        for proc, _ in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        # A graceful stop is not under test, and a worker stopping on SIGTERM waits for its
        # running task's thread: give them a second, then SIGKILL what is left.
        deadline = time.monotonic() + 1
        for proc, _ in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # The whole group, even when the leader already exited (children it may have left).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def logs(self, tail: int = 40) -> str:
        parts = []
        for proc, log in self._procs:
            try:
                lines = log.read_text(errors="replace").splitlines()[-tail:]
            except FileNotFoundError:
                lines = []
            parts.append(f"--- {log.name} (pid {proc.pid}, rc {proc.poll()}) ---")
            parts.extend(lines)
        return "\n".join(parts)

    # -- scheduler state ----------------------------------------------------------------------

    def task_count(self, client: Any) -> int:
        return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


@contextlib.contextmanager
def start_cluster(
    directory: Path,
    n_workers: int = 2,
    tls: TLSFiles | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[RealCluster]:
    """Start a scheduler and ``n_workers`` workers; kill them all on exit, even on failure."""
    directory.mkdir(parents=True, exist_ok=True)
    cluster = RealCluster(directory, tls=tls, env=dict(env or {}))
    try:
        cluster.start_scheduler()
        for _ in range(n_workers):
            cluster.start_worker()
        cluster.wait_for_workers(n_workers)
        yield cluster
    finally:
        cluster.close()


# ------------------------------------------------------------------ code that runs in the tasks


def attempt_counter() -> Callable[[str], int]:
    """A function counting the runs of a task (1, 2, ...) with one O_EXCL file per attempt.

    Made inside a function so that it is pickled by value: the workers cannot import the tests.
    """

    def attempt(marker_dir: str) -> int:
        import os

        n = 1
        while True:
            try:
                fd = os.open(os.path.join(marker_dir, f"attempt-{n}"), os.O_CREAT | os.O_EXCL)
                os.close(fd)
                return n
            except FileExistsError:
                n += 1

    return attempt


def file_signals() -> tuple[Callable[..., None], Callable[..., bool]]:
    """``mark(dir, name, text)`` writes a file atomically; ``wait_for(dir, name, timeout)`` polls
    for one (bounded) from inside a task. Pickled by value, like :func:`attempt_counter`."""

    def mark(marker_dir: str, name: str, text: str = "") -> None:
        import os

        tmp = os.path.join(marker_dir, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(marker_dir, name))

    def wait_for(marker_dir: str, name: str, timeout: float) -> bool:
        import os
        import time

        deadline = time.monotonic() + timeout
        while not os.path.exists(os.path.join(marker_dir, name)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    return mark, wait_for


def read_marker(directory: Path, name: str, timeout: float = HANG) -> str:
    """The text of a marker file a task writes, waiting (bounded) until it exists."""
    path = directory / name
    wait_until(path.exists, f"{path} exists", timeout)
    return path.read_text()
