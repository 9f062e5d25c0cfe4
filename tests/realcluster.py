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

Workers run with ``--no-nanny`` by default: a ``dask worker`` process is then the worker itself,
so the pid a task reports (``os.getpid()``) is the process the test started and kills, and a
SIGKILLed worker stays dead. With a nanny, the nanny would restart the killed worker a second or
two later: a re-run could land on either worker and the cluster's shape would change under the
test.

**Nanny mode** (``start_cluster(..., nanny=True)`` or ``start_worker(nanny=True)``) runs
``dask worker --nanny``. A pid in :attr:`RealCluster.workers` and :meth:`RealCluster.worker_pids`
is then the *nanny's*; its process group also holds the worker process (a child the nanny starts
with multiprocessing's ``spawn``) and multiprocessing's resource tracker. A task's ``os.getpid()``
is the worker child's: :meth:`RealCluster.worker_process_pids` lists those as the scheduler sees
them (the pids the workers reported when registering, ``WorkerState.pid`` on the scheduler: what
a plain client's ``client.run(os.getpid)`` returns; ``psutil.Process(nanny_pid).children()``
also finds them, next to the resource tracker). :meth:`RealCluster.kill_worker_process` SIGKILLs
one worker child, and its nanny starts a new one, which registers with a new pid (but not while
the nanny itself is still starting: see :meth:`RealCluster.wait_for_workers`)::

    with start_cluster(tmp_path / "cluster", n_workers=1, nanny=True) as cluster:
        (child,) = cluster.worker_process_pids()
        cluster.kill_worker_process(child)
        wait_until(lambda: cluster.worker_process_pids() - {child}, "the nanny restarted it")

:meth:`RealCluster.kill_worker` on a nanny's pid kills the whole group (nanny and worker: it
stays dead), and :meth:`RealCluster.close` kills every group it started, nannies' included.

**A scheduler restart on the same address** (:meth:`RealCluster.restart_scheduler`): the
scheduler is started with ``--port 0``; the restart kills it and starts a new ``dask scheduler``
with ``--port`` set to the port the first one got, so :attr:`RealCluster.address` stays valid.
Dask (2026.8) workers do **not** reconnect to a new scheduler: a worker whose scheduler
connection breaks closes itself (``worker-handle-scheduler-connection-broken``) and closes its
nanny too, and a scheduler stopped by SIGTERM tells its workers and nannies to close. So the
restart kills the fixture's running workers and starts a replacement for each (same nanny mode,
same venv) in its place in :attr:`RealCluster.workers` (``restart_workers=False`` leaves the old
ones to close themselves); wait for them to register as after the start::

    old = cluster.worker_pids()
    cluster.restart_scheduler()              # SIGKILL; sig=signal.SIGTERM for a graceful stop
    cluster.wait_for_workers(2)
    assert cluster.worker_pids().isdisjoint(old)   # new worker processes, the same address

**A Python without daskgen**: :func:`make_venv_without_daskgen` builds (once, cached) a venv with
the same Python and the same versions of dask, distributed and everything they need, but no
daskgen; ``start_worker(venv=path)`` and ``start_scheduler(venv=path)`` (``start_cluster(...,
worker_venv=path, scheduler_venv=path)``) run ``dask`` from it. These processes cannot see the
project either through ``PYTHONPATH`` (dropped) or their current directory (the cluster
directory).

Functions that run on these workers must be pickled by value (defined inside a function, or in a
driver's ``__main__``): the workers cannot import the test modules, like on a real cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


def _dask(venv: Path | None) -> str:
    """The ``dask`` CLI of this Python, or of the venv at ``venv``."""
    if venv is None:
        return DASK
    dask = Path(venv) / "bin" / "dask"
    if not dask.exists():
        raise FileNotFoundError(f"{dask} does not exist: is {venv} a venv with distributed?")
    return str(dask)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process runs with this pid (a zombie, dead but not yet reaped, does not)."""
    import psutil  # lazily: the module stays stdlib-only at import time

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _registered_pids(client: Any) -> list[int]:
    """The pids the workers registered with the scheduler reported (``WorkerState.pid``: not in
    ``scheduler_info()``)."""
    return client.run_on_scheduler(
        lambda dask_scheduler: [ws.pid for ws in dask_scheduler.workers.values()]
    )


def _port_bindable(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:port now (with SO_REUSEADDR, as Tornado binds:
    connections in TIME_WAIT do not block it, a live listener does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SchedulerExited(RuntimeError):
    """A ``dask scheduler`` exited before writing its scheduler file."""


@dataclass
class WorkerSpec:
    """How a worker was started, to start its replacement the same way."""

    nanny: bool = False
    venv: Path | None = None
    env: dict[str, str] | None = None  # on top of the cluster's
    memory_limit: str | None = None  # ``dask worker --memory-limit`` (None: Dask's default)


@dataclass
class RealCluster:
    directory: Path
    tls: TLSFiles | None = None
    env: dict[str, str] = field(default_factory=dict)
    address: str = ""
    scheduler: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    nanny: bool = False  # the default of start_worker(nanny=...)
    scheduler_venv: Path | None = None  # where the scheduler's ``dask`` comes from (None: here)
    scheduler_port: int = 0  # the port the first scheduler got, reused by restart_scheduler
    specs: dict[int, WorkerSpec] = field(default_factory=dict)  # by the worker Popen's pid
    _procs: list[tuple[subprocess.Popen, Path]] = field(default_factory=list)
    _started: dict[str, int] = field(default_factory=dict)  # how many of each kind, for names

    # -- processes --------------------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        args: list[str],
        venv: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        log = self.directory / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [_dask(venv), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
                env=_cluster_env({**self.env, **(env or {})}),
                start_new_session=True,  # its own process group: teardown kills exactly it
            )
        self._procs.append((proc, log))
        return proc

    def _next(self, kind: str) -> int:
        n = self._started.get(kind, 0)
        self._started[kind] = n + 1
        return n

    @property
    def scheduler_file(self) -> Path:
        return self.directory / "scheduler.json"

    def start_scheduler(self, venv: Path | None = None) -> None:
        """Start ``dask scheduler --port 0`` (from the venv at ``venv``, if given) and wait for
        its address; the port it got is kept in :attr:`scheduler_port`."""
        self.scheduler_venv = venv
        self.address = self._launch_scheduler(port=0)
        self.scheduler_port = int(self.address.rsplit(":", 1)[1])

    def _launch_scheduler(self, port: int, timeout: float = STARTUP) -> str:
        n = self._next("scheduler")
        self.scheduler_file.unlink(missing_ok=True)  # a killed scheduler leaves its file
        args = ["scheduler", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--scheduler-file", str(self.scheduler_file), "--dashboard-address", ":0"]
        if self.tls is not None:
            args += ["--protocol", "tls", *self.tls.cli_flags()]
        name = "scheduler" if n == 0 else f"scheduler-{n}"
        scheduler = self.scheduler = self._spawn(name, args, self.scheduler_venv)

        def address() -> str | None:
            if scheduler.poll() is not None:
                raise SchedulerExited(f"dask scheduler exited early:\n{self.logs()}")
            try:
                return json.loads(self.scheduler_file.read_text())["address"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                return None

        return wait_until(address, "the scheduler wrote its address", timeout)

    def start_worker(
        self,
        venv: Path | None = None,
        nanny: bool | None = None,
        env: dict[str, str] | None = None,
        memory_limit: str | None = None,
    ) -> subprocess.Popen:
        """Start one single-threaded ``dask worker`` (``CPU=1``), with a nanny if ``nanny`` (by
        default :attr:`nanny`), from the venv at ``venv`` if given (see
        :func:`make_venv_without_daskgen`), with ``env`` added to the cluster's environment.
        ``memory_limit``: its ``--memory-limit`` (its nanny ends it past
        ``distributed.worker.memory.terminate`` of that).
        Returns the process: the worker, or its nanny."""
        spec = WorkerSpec(self.nanny if nanny is None else nanny, venv, env, memory_limit)
        proc = self._launch_worker(spec)
        self.workers.append(proc)
        return proc

    def _launch_worker(self, spec: WorkerSpec) -> subprocess.Popen:
        n = self._next("worker")
        local = self.directory / f"worker-{n}"
        local.mkdir(exist_ok=True)
        args = ["worker", self.address, "--nthreads", "1", "--nworkers", "1"]
        args += ["--nanny" if spec.nanny else "--no-nanny"]
        args += ["--resources", "CPU=1", "--host", "127.0.0.1", "--local-directory", str(local)]
        if spec.memory_limit is not None:
            args += ["--memory-limit", spec.memory_limit]
        if self.tls is not None:
            args += self.tls.cli_flags()
        proc = self._spawn(f"worker-{n}", args, spec.venv, spec.env)
        self.specs[proc.pid] = spec
        return proc

    def _spec(self, worker: subprocess.Popen) -> WorkerSpec:
        return self.specs.get(worker.pid) or WorkerSpec()

    def wait_for_workers(self, n: int) -> None:
        """Wait until ``n`` workers are registered and, with nannies, every nanny has finished
        starting.

        A nanny's worker registers with the scheduler before the nanny has finished starting,
        and a worker process killed in between is not restarted: the whole ``dask worker``
        exits ("Nanny failed to start"). So this also waits until the scheduler has no nanny
        still starting (its ``add_nanny`` handler got the nanny's "ok"), then until every nanny
        answers (a Dask server answers only once started)."""
        with self.client() as client:
            try:
                client.wait_for_workers(n, timeout=STARTUP)
            except TimeoutError as exc:
                raise RuntimeError(f"{n} workers did not register:\n{self.logs()}") from exc
            if any(self._spec(p).nanny for p in self.workers if p.poll() is None):
                wait_until(
                    lambda: client.run_on_scheduler(
                        lambda dask_scheduler: not dask_scheduler._starting_nannies
                    ),
                    "no nanny is still starting",
                    STARTUP,
                )
                client.run(os.getpid, nanny=True)  # returns at once now: each nanny has started

    @contextlib.contextmanager
    def client(self, **kwargs: Any) -> Iterator[Any]:
        """A plain ``distributed.Client`` of the test's own (not daskgen's), for observing."""
        from distributed import Client

        if self.tls is not None:
            kwargs.setdefault("security", self.tls.security())
        with Client(self.address, timeout=STARTUP, **kwargs) as client:
            yield client

    def worker_pids(self) -> set[int]:
        """The pids of the live ``dask worker`` processes the test started: the workers, or with
        a nanny the nannies (see :meth:`worker_process_pids`)."""
        return {p.pid for p in self.workers if p.poll() is None}

    def worker_process_pids(self, client: Any = None) -> set[int]:
        """The pids of the live worker processes registered with the scheduler (what a task's
        ``os.getpid()`` returns) that belong to this cluster's worker process groups: the same as
        :meth:`worker_pids` without a nanny, the nannies' worker children with one.

        Read from the scheduler's view of its workers through ``client`` (a plain client, by
        default a new one), not by ``client.run(os.getpid)``, which would give the same pids but
        hangs for the connect timeout (30 s) on a killed worker the scheduler still lists."""
        if client is None:
            with self.client(set_as_default=False) as client:
                return self.worker_process_pids(client)
        groups = self.worker_pids()
        return {pid for pid in _registered_pids(client) if _pgid(pid) in groups and pid_alive(pid)}

    def group_pids(self) -> set[int]:
        """Every live process in the process groups this cluster started (schedulers, workers,
        nannies, their children), whether or not the group's leader still runs."""
        import psutil

        groups = {proc.pid for proc, _ in self._procs}
        return {p.pid for p in psutil.process_iter() if _pgid(p.pid) in groups and pid_alive(p.pid)}

    def kill_worker(self, pid: int) -> None:
        """SIGKILL the worker with this pid: only ever one this cluster started. With a nanny,
        ``pid`` is the nanny's and its whole group (nanny and worker child) dies for good."""
        procs = [p for p in self.workers if p.pid == pid]
        assert procs, f"pid {pid} is not one of this cluster's workers {self.worker_pids()}"
        os.killpg(pid, signal.SIGKILL)
        procs[0].wait(timeout=HANG)

    def kill_worker_process(self, pid: int, timeout: float = HANG) -> None:
        """SIGKILL the worker process ``pid`` running under one of this cluster's nannies (see
        :meth:`worker_process_pids`) and wait until it is dead; its nanny then starts a new
        worker process, which registers with the scheduler under a new pid and address."""
        nannies = {p.pid for p in self.workers if p.poll() is None and self._spec(p).nanny}
        assert pid not in nannies, f"{pid} is a nanny: kill_worker({pid}) kills nanny and worker"
        assert _pgid(pid) in nannies, f"pid {pid} is not a worker under the nannies {nannies}"
        os.kill(pid, signal.SIGKILL)
        # Not our child: its nanny reaps it. Dead is enough (a zombie does not run).
        wait_until(lambda: not pid_alive(pid), f"worker process {pid} died", timeout)

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        os.killpg(self.scheduler.pid, signal.SIGKILL)
        self.scheduler.wait(timeout=HANG)

    def restart_scheduler(
        self,
        sig: int = signal.SIGKILL,
        *,
        restart_workers: bool = True,
        timeout: float = STARTUP,
    ) -> None:
        """Kill the scheduler with ``sig`` (SIGKILL; SIGTERM for a graceful close) and start a
        new one on the same address, from the same venv; return once it answers a client.

        Dask workers do not reconnect to a new scheduler: they close themselves (and their
        nannies) when the old one goes, a moment later or once their running task ends. So with
        ``restart_workers`` (the default) the workers of this cluster still running are killed
        (SIGKILL, whole groups) and each is replaced, in its place in :attr:`workers`, by a new
        one started the same way (nanny mode, venv); follow with :meth:`wait_for_workers`.
        Without it the old workers are left to close themselves and none is started."""
        assert self.scheduler is not None and self.scheduler_port, "start_scheduler() first"
        old = self.scheduler
        # Before the kill: a worker told to close by a scheduler stopping on SIGTERM may be gone
        # by the time that scheduler has exited.
        replace = [i for i, p in enumerate(self.workers) if p.poll() is None]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(old.pid, sig)
        try:
            old.wait(timeout=HANG)
        except subprocess.TimeoutExpired:
            os.killpg(old.pid, signal.SIGKILL)
            old.wait(timeout=HANG)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(old.pid, signal.SIGKILL)  # whatever the group left

        if restart_workers:
            for i in replace:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.workers[i].pid, signal.SIGKILL)
                self.workers[i].wait(timeout=HANG)

        address = self._relaunch_scheduler(timeout)
        if address != self.address:
            raise RuntimeError(f"the new scheduler listens on {address}, not {self.address}")
        with self.client(set_as_default=False):
            pass  # it answers
        if restart_workers:
            for i in replace:
                self.workers[i] = self._launch_worker(self._spec(self.workers[i]))

    def _relaunch_scheduler(self, timeout: float) -> str:
        """A new scheduler on :attr:`scheduler_port`, retrying (bounded) while the port cannot be
        bound: the dead scheduler's connections in TIME_WAIT do not block Tornado's bind
        (SO_REUSEADDR), but another process may have taken the port meanwhile."""
        deadline = time.monotonic() + timeout
        port = self.scheduler_port
        for attempt in range(1, 6):
            left = max(1.0, deadline - time.monotonic())
            wait_until(lambda: _port_bindable(port), f"127.0.0.1:{port} can be bound", left)
            try:
                return self._launch_scheduler(port, max(1.0, deadline - time.monotonic()))
            except SchedulerExited:
                log = self._procs[-1][1].read_text(errors="replace")
                in_use = "already in use" in log or "Errno 98" in log
                if not in_use or attempt == 5 or time.monotonic() > deadline:
                    raise
        raise AssertionError("unreachable")

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
            # The whole group, even when the leader already exited (children it may have left:
            # a nanny's worker process and resource tracker).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        # The leaders are reaped; other members of their groups (a nanny's children) die a moment
        # after the SIGKILL, reparented to init.
        with contextlib.suppress(ImportError):  # psutil, as distributed requires
            wait_until(lambda: not self.group_pids(), "the started process groups are empty", 10)

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
    *,
    nanny: bool = False,
    worker_venv: Path | None = None,
    scheduler_venv: Path | None = None,
    memory_limit: str | None = None,
) -> Iterator[RealCluster]:
    """Start a scheduler and ``n_workers`` workers; kill them all on exit, even on failure.

    ``nanny``: workers with ``--nanny`` (see the module's doc for what a pid is then).
    ``worker_venv`` / ``scheduler_venv``: run their ``dask`` from that venv, e.g. one from
    :func:`make_venv_without_daskgen`. ``memory_limit``: each worker's ``--memory-limit``."""
    directory.mkdir(parents=True, exist_ok=True)
    cluster = RealCluster(directory, tls=tls, env=dict(env or {}), nanny=nanny)
    try:
        cluster.start_scheduler(venv=scheduler_venv)
        for _ in range(n_workers):
            cluster.start_worker(venv=worker_venv, memory_limit=memory_limit)
        cluster.wait_for_workers(n_workers)
        yield cluster
    finally:
        cluster.close()


# ------------------------------------------------------------------ a Python without daskgen

# The distributions a daskgen worker needs (with what they require, found in this environment).
VENV_ROOTS = ("dask", "distributed", "numpy", "cloudpickle", "tornado", "msgpack", "psutil")
VENV_BUILD = 900  # seconds: bound on building the venv (pip downloads included)
_VENV_MARKER = ".daskgen-test-venv.json"  # written once the venv is built and verified
_venvs: dict[Path, Path] = {}  # verified in this process: parent directory -> venv


def venv_pins(roots: tuple[str, ...] = VENV_ROOTS) -> dict[str, str]:
    """``{name: version}`` of ``roots`` and everything they require (their markers evaluated for
    this Python, no extras), as installed in this environment; daskgen itself left out."""
    from importlib import metadata

    from packaging.requirements import Requirement  # distributed requires packaging
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in pins or name == "daskgen":
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here: pip resolves it in the venv
        pins[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return dict(sorted(pins.items()))


_VERIFY = """
import importlib.util, json, sys
from importlib import metadata
import dask, distributed, numpy, cloudpickle, msgpack, tornado
spec = importlib.util.find_spec("daskgen")
try:
    import daskgen
except ImportError:
    daskgen = None
print(json.dumps({
    "daskgen": None if spec is None and daskgen is None else str(spec and spec.origin),
    "version": sys.version,
    "versions": {d.metadata["Name"].lower(): d.version for d in metadata.distributions()},
}))
"""


def _verify_venv(venv: Path, pins: dict[str, str]) -> None:
    """Raise unless ``venv``'s Python is this one, imports distributed and friends at the pinned
    versions, and cannot import daskgen (run as the cluster runs it: no PYTHONPATH, a cwd away
    from the project)."""
    python = venv / "bin" / "python"
    result = subprocess.run(
        [str(python), "-c", _VERIFY],
        capture_output=True,
        text=True,
        cwd=venv,
        env=_cluster_env(None),
        timeout=HANG,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{python} cannot import distributed:\n{result.stderr}")
    found = json.loads(result.stdout)
    if found["daskgen"] is not None:
        raise RuntimeError(f"{python} imports daskgen (from {found['daskgen']}): it must not")
    if found["version"] != sys.version:
        raise RuntimeError(f"{python} is Python {found['version']}, not {sys.version}")
    versions = {name.replace("_", "-"): v for name, v in found["versions"].items()}
    wrong = {n: (v, versions.get(n)) for n, v in pins.items() if versions.get(n) != v}
    if wrong:
        raise RuntimeError(f"{python} has other versions (wanted, found): {wrong}")
    if not (venv / "bin" / "dask").exists():
        raise RuntimeError(f"{venv / 'bin' / 'dask'} is missing")


def _build_venv(venv: Path, pins: dict[str, str]) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    env = _cluster_env({"PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    env.pop("VIRTUAL_ENV", None)
    run = dict(check=True, capture_output=True, text=True, env=env, cwd=venv.parent)
    try:
        # This interpreter's venv module makes the venv on the base Python (the same one).
        subprocess.run([sys.executable, "-m", "venv", str(venv)], timeout=VENV_BUILD, **run)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--prefer-binary"]
        args = [*pip, *(f"{name}=={version}" for name, version in pins.items())]
        subprocess.run(args, timeout=VENV_BUILD, **run)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(venv, ignore_errors=True)
        raise RuntimeError(
            f"building the venv without daskgen failed: {exc.cmd}\n{exc.stdout}\n{exc.stderr}"
        ) from exc
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise


def make_venv_without_daskgen(directory: Path | None = None) -> Path:
    """A venv with this Python and this environment's versions of dask, distributed, numpy,
    cloudpickle, tornado, msgpack, psutil and all they require (:func:`venv_pins`), but without
    daskgen: for workers and schedulers that cannot import it (``start_worker(venv=...)``).

    Built once in ``directory`` (by default the temporary directory, so it outlives a test
    session: pass pytest's cache or a session temporary directory for another place) as
    ``daskgen-test-venv-<hash of the Python and the pins>``, under a file lock so parallel
    sessions build it once; later calls reuse it after checking it again (once per process).
    Raises RuntimeError when the venv can import daskgen or cannot import distributed."""
    import fcntl

    parent = Path(directory if directory is not None else tempfile.gettempdir()).resolve()
    if parent in _venvs:
        return _venvs[parent]
    pins = venv_pins()
    key = json.dumps(
        [sys.version, os.path.realpath(getattr(sys, "_base_executable", sys.executable)), pins]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    venv = parent / f"daskgen-test-venv-{digest}"
    parent.mkdir(parents=True, exist_ok=True)
    with open(parent / f"{venv.name}.lock", "w") as lock:

        def locked() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        wait_until(locked, f"the lock on {venv} (another build)", VENV_BUILD)
        try:
            marker = venv / _VENV_MARKER
            if marker.exists():
                try:
                    _verify_venv(venv, pins)
                except RuntimeError:
                    marker.unlink()  # broken since: build it again
            if not marker.exists():
                _build_venv(venv, pins)
                _verify_venv(venv, pins)
                marker.write_text(json.dumps(pins, indent=1))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _venvs[parent] = venv
    return venv


def make_other_daskgen(directory: Path, version: str) -> dict[str, str]:
    """A stand-in ``daskgen`` package that says it is ``version`` (only its ``_protocol.VERSION``,
    which daskgen's version check reads), under ``directory``; returns the environment that puts
    it first on a process's path (pass it to :meth:`RealCluster.start_worker` or as a
    cluster's ``env``)."""
    package = Path(directory) / "daskgen"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(f"__version__ = {version!r}\n")
    (package / "_protocol.py").write_text(f"VERSION = {version!r}\n")
    return {"PYTHONPATH": str(directory)}


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
