"""Ray's ``runtime_env``, the driver's half: ship what the workers need, with Dask's own
machinery, and take it off the cluster again at ``shutdown`` (runs in the driver).

* ``env_vars`` need nothing shipped: they travel with each call (``_job.EnvSpec``).
* ``working_dir`` and each of ``py_modules`` (``init`` only, as on Ray): zipped here, named by
  their content's hash, and sent to every worker, and to every worker that joins while this
  driver runs, by Dask's ``UploadFile`` worker plugin (``load=False``: nothing is imported, the
  file lands in the worker's local directory). A daskgen task unpacks it there on first use
  (``_worker.runtime_env``).
* ``pip``: Dask's ``PipInstall`` plugin, with ``--target`` a directory of this driver's under
  the temporary directory of each host: the packages never enter the workers' own environment
  (other clients, and workers without daskgen, see no change); only daskgen's calls with this
  ``runtime_env`` have that directory on their ``sys.path``. Dask runs the install on the
  scheduler too (its plugin does), and on each worker, one at a time per host.

``release`` (``shutdown``) unregisters every plugin this driver registered, so workers that
join later get none of it, and removes its pip directories. Files already unpacked stay in the
workers' local directories, which Dask removes with the worker.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from typing import Any

from distributed import Client
from distributed.diagnostics.plugin import PipInstall, UploadFile

from .. import _runtime
from .._job import EnvSpec, Job, merge, pip_packages
from ..exceptions import RuntimeEnvSetupError

# What daskgen sends through the scheduler as one plugin (Ray's own limit is its gRPC message
# size, 512 MiB by default): past this, exclude files or install them on the workers.
MAX_UPLOAD_BYTES = 256 * 2**20
_SKIPPED = ("__pycache__", ".git")


@dataclass
class Shipped:
    """What one session put on its cluster (removed by :func:`release`), and the runtime_envs
    it prepared (option -> spec: each is shipped once)."""

    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    plugins: list[str] = field(default_factory=list)  # worker plugins (UploadFile)
    installs: list[str] = field(default_factory=list)  # PipInstall (scheduler + workers)
    prepared: dict[str, EnvSpec | None] = field(default_factory=dict)

    @property
    def pip_root(self) -> str:
        return os.path.join(tempfile.gettempdir(), f"daskgen-pip-{self.token}")


def prepare(client: Client, shipped: Shipped, env: dict[str, Any] | None) -> EnvSpec | None:
    """The spec of ``env`` (checked already), shipping what it needs the first time."""
    if not env:
        return None
    key = json.dumps(env, sort_keys=True, default=str)
    if key in shipped.prepared:
        return shipped.prepared[key]
    working_dir = env.get("working_dir")
    excludes = env.get("excludes") or []
    spec = EnvSpec(
        env_vars=tuple(sorted((env.get("env_vars") or {}).items())),
        working_dir=_upload(client, shipped, "working_dir", working_dir, excludes)
        if working_dir
        else None,
        py_modules=tuple(
            _upload(client, shipped, "py_modules", path, excludes)
            for path in env.get("py_modules") or ()
        ),
        pip=_install(client, shipped, env["pip"]) if env.get("pip") is not None else None,
    )
    shipped.prepared[key] = spec or None
    return spec or None


def call_job(client: Client, option: Any) -> Job:
    """The job a call runs in: the caller's (the driver's, or the running task's), with the
    call's own ``runtime_env`` option merged in (Ray's inheritance, see ``_job.merge``)."""
    job = _runtime.job()
    if not option:
        return job
    session = _runtime.session
    if _runtime.in_worker_task() is None and session is not None:
        own = prepare(client, session.shipped, option)
    else:
        own = _inside_a_task(option, job)
    return Job(job.namespace, merge(job.env, own))


def _inside_a_task(option: dict[str, Any], job: Job) -> EnvSpec | None:
    """A call made inside a task ships nothing (what it ships would outlive its driver):
    ``env_vars`` apply; ``pip`` must be one its driver installed already."""
    pip = None
    if option.get("pip") is not None:
        digest = _pip_digest(*pip_packages(option["pip"]))
        inherited = job.env.pip if job.env is not None else None
        if inherited is None or os.path.basename(inherited) != digest:
            raise ValueError(
                "runtime_env['pip'] of a call made inside a task or actor must be the one its "
                "driver installed (in init(runtime_env=...) or a call made from the driver): "
                "daskgen installs packages from the driver only."
            )
        pip = inherited
    env_vars = tuple(sorted((option.get("env_vars") or {}).items()))
    return EnvSpec(env_vars=env_vars, pip=pip) or None


# ------------------------------------------------------------------------ working_dir, py_modules


def _upload(client: Client, shipped: Shipped, kind: str, path: str, excludes: list[str]) -> str:
    """Send ``path`` (a directory or a file) to every worker as a zip; returns its name (the
    workers find ``<name>.zip`` in their local directory)."""
    data = _zip(path, excludes, kind)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(
            f"runtime_env[{kind!r}]: {path} is {len(data) / 2**20:.0f} MiB zipped, more than "
            f"daskgen ships through the scheduler ({MAX_UPLOAD_BYTES // 2**20} MiB). Exclude "
            "large files (runtime_env['excludes']), or put them where the workers can read them."
        )
    label = kind.replace("_", "-")
    if os.path.isfile(path) and path.endswith(".zip") and kind == "working_dir":
        label += "-archive"  # a .zip of one directory: the workers enter that directory
    name = f"daskgen-{label}-{hashlib.sha256(data).hexdigest()[:16]}"
    plugin_name = f"{name}-{shipped.token}"
    if plugin_name in shipped.plugins:
        return name
    with tempfile.TemporaryDirectory(prefix="daskgen-upload-") as tmp:
        archive = os.path.join(tmp, name + ".zip")
        with open(archive, "wb") as f:
            f.write(data)
        plugin = UploadFile(archive, load=False)  # reads the file now
    try:
        client.register_plugin(plugin, name=plugin_name)
    except Exception as exc:
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(plugin_name)
        raise RuntimeEnvSetupError(
            f"Failed to set up runtime environment.\nruntime_env[{kind!r}]: {path} could not be "
            f"sent to every worker: {exc!r}"
        ) from None
    shipped.plugins.append(plugin_name)
    return name


def _zip(path: str, excludes: list[str], kind: str) -> bytes:
    """``path`` as a zip with stable bytes (sorted, fixed times: the same files give the same
    hash). A directory's files sit at the top for ``working_dir``, under the directory's name
    for ``py_modules`` (its package); a file is stored as it is named, a .zip or .whl whole."""
    if os.path.isfile(path) and path.endswith((".zip", ".whl")):
        with open(path, "rb") as f:
            return f.read()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        if os.path.isfile(path):
            _add(archive, path, os.path.basename(path))
        prefix = os.path.basename(os.path.normpath(path)) if kind == "py_modules" else ""
        for root, dirs, files in os.walk(path):  # nothing for a file
            dirs[:] = sorted(d for d in dirs if d not in _SKIPPED)
            for name in sorted(files):
                full = os.path.join(root, name)
                rel = os.path.relpath(full, path).replace(os.sep, "/")
                if name.endswith(".pyc") or _excluded(rel, excludes):
                    continue
                _add(archive, full, f"{prefix}/{rel}" if prefix else rel)
    return out.getvalue()


def _excluded(rel: str, patterns: list[str]) -> bool:
    """Ray's ``excludes``: a pattern matches the relative path or any of its parts."""
    parts = rel.split("/")
    return any(
        fnmatch.fnmatch(rel, p.strip("/")) or any(fnmatch.fnmatch(part, p) for part in parts)
        for p in patterns
    )


def _add(archive: zipfile.ZipFile, path: str, name: str) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = (os.stat(path).st_mode & 0o777) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(path, "rb") as f:
        archive.writestr(info, f.read())


# ------------------------------------------------------------------------------------- pip


def _pip_digest(lines: list[str], options: list[str]) -> str:
    return hashlib.sha256(json.dumps([lines, options]).encode()).hexdigest()[:16]


def _install(client: Client, shipped: Shipped, pip: Any) -> str:
    """Install ``pip``'s packages with Dask's ``PipInstall`` into this driver's directory on
    every host; returns that directory."""
    lines, options = pip_packages(pip)
    digest = _pip_digest(lines, options)
    target = os.path.join(shipped.pip_root, digest)
    name = f"daskgen-pip-{shipped.token}-{digest}"
    if name in shipped.installs:
        return target
    flags = ["--target", target, "--disable-pip-version-check", "--no-input", *options]
    plugin = PipInstall(lines, pip_options=flags)
    plugin.name = name  # the worker plugin it registers is named the same
    try:
        client.register_plugin(plugin, name=name)
    except Exception as exc:
        _unregister_install(client, name)
        raise RuntimeEnvSetupError(
            f"Failed to set up runtime environment.\nruntime_env['pip']: {lines} could not be "
            f"installed on the cluster with Dask's PipInstall: {exc}"
        ) from None
    shipped.installs.append(name)
    return target


def _unregister_install(client: Client, name: str) -> None:
    # Dask's PipInstall leaves its worker plugin behind when unregistered: remove both.
    with contextlib.suppress(Exception):
        client.unregister_scheduler_plugin(name)
    with contextlib.suppress(Exception):
        client.unregister_worker_plugin(name)


def release(client: Client, shipped: Shipped) -> None:
    """Take off the cluster what this session put there (``shutdown``): later workers get none
    of it; this driver's pip directories go from every host."""
    if client.status != "running" or not (shipped.plugins or shipped.installs):
        return
    for name in shipped.plugins:
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(name)
    for name in shipped.installs:
        _unregister_install(client, name)
    if shipped.installs:
        root = shipped.pip_root
        with contextlib.suppress(Exception):
            client.run(shutil.rmtree, root, True, on_error="ignore")
        with contextlib.suppress(Exception):
            client.run_on_scheduler(shutil.rmtree, root, True)
    shipped.plugins.clear()
    shipped.installs.clear()
