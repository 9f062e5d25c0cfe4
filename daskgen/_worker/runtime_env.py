"""Ray's ``runtime_env``, the workers' half: a daskgen task or actor call runs in the
environment its call asked for, and the worker's own comes back after it (runs in the workers;
``_client.runtime_env`` ships the files and packages).

While a call runs, :func:`applied` gives it:

* ``env_vars`` in ``os.environ``;
* ``working_dir`` as its current directory, and on ``sys.path`` (Ray's working directory: the
  call imports modules and opens files of it by relative path);
* each of ``py_modules``, and the directory ``pip`` installed into, on ``sys.path``.

Each is undone when the last call using it ends, so other tasks, of daskgen or of any other
client of the worker, run as they would without it: the modules the calls imported from those
directories leave ``sys.modules`` too, kept aside and put back for the next call that has the
directory (imported once per worker, as in Ray's worker processes of one environment). A
process has one environment, one current directory and one ``sys.path``: on a worker with
several threads, calls running at the same time see each other's. Ray runs each environment in
worker processes of its own; use single-threaded workers for the same isolation.

The files of ``working_dir`` and ``py_modules`` arrive as ``<name>.zip`` in the worker's local
directory (Dask's ``UploadFile``); the first call that needs one unpacks it next to it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import zipfile
from collections.abc import Iterator
from typing import Any

from .._job import EnvSpec
from ..exceptions import RuntimeEnvSetupError

_lock = threading.RLock()
_saved_vars: dict[str, list[Any]] = {}  # name -> [value before daskgen set it, calls using it]
_added_paths: dict[str, int] = {}  # sys.path entries daskgen put there -> calls using each
# Per such entry: the modules loaded before it was put there, and those imported from it,
# kept aside while no call has it.
_modules_before: dict[str, set[str]] = {}
_kept_aside: dict[str, dict[str, Any]] = {}
_saved_cwd: list[Any] = []  # [directory before the first working_dir, calls using one]
_unpacked: dict[str, str] = {}  # archive path -> the directory it was unpacked into


_NOTHING = contextlib.nullcontext()


def applied(env: EnvSpec | None, worker: Any) -> contextlib.AbstractContextManager[Any]:
    """Run the body in ``env`` (nothing to do for None), restoring the worker's after."""
    return _applied(env, worker) if env else _NOTHING


@contextlib.contextmanager
def _applied(env: EnvSpec, worker: Any) -> Iterator[None]:
    cwd = _directory(worker, env.working_dir, "working_dir") if env.working_dir else None
    paths = [cwd] if cwd else []
    paths += [_directory(worker, name, "py_modules") for name in env.py_modules]
    if env.pip:
        if not os.path.isdir(env.pip):
            raise RuntimeEnvSetupError(
                "Failed to set up runtime environment.\nThe packages of runtime_env['pip'] are "
                f"not installed on worker {worker.address} ({env.pip} is missing): Dask's "
                "PipInstall failed there, or the driver that installed them has shut down."
            )
        paths.append(env.pip)
    _enter(env.env_vars, paths, cwd)
    try:
        yield
    finally:
        _leave(env.env_vars, paths, cwd)


def _enter(env_vars: tuple[tuple[str, str], ...], paths: list[str], cwd: str | None) -> None:
    with _lock:
        for name, value in env_vars:
            saved = _saved_vars.get(name)
            if saved is None:
                _saved_vars[name] = [os.environ.get(name), 1]
            else:
                saved[1] += 1
            os.environ[name] = value
        fresh = False
        for path in reversed(paths):  # the first one ends up first
            users = _added_paths.get(path, 0)
            _added_paths[path] = users + 1
            if not users:
                sys.path.insert(0, path)
                _modules_before[path] = set(sys.modules.copy())
                for name, module in _kept_aside.pop(path, {}).items():
                    sys.modules.setdefault(name, module)
                fresh = True
        if fresh:
            importlib.invalidate_caches()
        if cwd is not None:
            if _saved_cwd:
                _saved_cwd[1] += 1
            else:
                _saved_cwd[:] = [os.getcwd(), 1]
            os.chdir(cwd)


def _leave(env_vars: tuple[tuple[str, str], ...], paths: list[str], cwd: str | None) -> None:
    with _lock:
        for name, _ in env_vars:
            saved = _saved_vars[name]
            saved[1] -= 1
            if saved[1]:
                continue
            del _saved_vars[name]
            if saved[0] is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = saved[0]
        for path in paths:
            _added_paths[path] -= 1
            if not _added_paths[path]:
                del _added_paths[path]
                with contextlib.suppress(ValueError):
                    sys.path.remove(path)
                _set_aside(path)
        if cwd is not None:
            _saved_cwd[1] -= 1
            if not _saved_cwd[1]:
                with contextlib.suppress(OSError):
                    os.chdir(_saved_cwd[0])
                _saved_cwd.clear()


def _set_aside(path: str) -> None:
    """Take the modules imported from ``path`` out of ``sys.modules`` (kept for the next call
    that puts ``path`` back; those loaded before it was added stay)."""
    before = _modules_before.pop(path, set())
    loaded = sys.modules.copy()
    aside = _kept_aside.setdefault(path, {})
    prefix = path.rstrip(os.sep) + os.sep
    for name, module in loaded.items():
        if name in before:
            continue
        origin = getattr(module, "__file__", None) or next(
            iter(getattr(module, "__path__", [])), ""
        )
        if isinstance(origin, str) and os.path.abspath(origin).startswith(prefix):
            aside[name] = sys.modules.pop(name)
    if not aside:
        del _kept_aside[path]


def _directory(worker: Any, name: str, kind: str) -> str:
    """The directory the archive ``name`` is unpacked into on this worker (unpacked now, the
    first time)."""
    archive = os.path.join(worker.local_directory, name + ".zip")
    with _lock:
        found = _unpacked.get(archive)
        if found is not None and os.path.isdir(found):
            return found
        if not os.path.isfile(archive):
            raise RuntimeEnvSetupError(
                f"Failed to set up runtime environment.\nThe files of runtime_env[{kind!r}] "
                f"({name}) are not on worker {worker.address}: they are sent to every worker "
                "while the driver that shipped them runs (Dask's UploadFile plugin)."
            )
        target = archive[: -len(".zip")]
        if not os.path.isdir(target):
            partial = f"{target}.partial-{os.getpid()}-{threading.get_ident()}"
            with zipfile.ZipFile(archive) as z:
                z.extractall(partial)
            os.replace(partial, target)
        found = target
        if "-archive-" in name:
            # A working_dir given as a .zip of one directory: that directory is the one.
            entries = os.listdir(target)
            if len(entries) == 1 and os.path.isdir(os.path.join(target, entries[0])):
                found = os.path.join(target, entries[0])
        _unpacked[archive] = found
        return found
