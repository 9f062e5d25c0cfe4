"""Namespaces and ``runtime_env`` on a real cluster: a ``dask scheduler`` and ``dask worker
--nanny`` processes on 127.0.0.1, daskgen connected by address.

The parity modules ``tests/parity/test_namespaces.py`` and ``tests/parity/test_runtime_env.py``
run again here, with this module's ``ray`` and ``reinit`` fixtures; then what a user's shared
cluster needs besides: another client of the cluster sees nothing of a driver's runtime_env,
``shutdown`` takes it off the cluster, and workers that join while the driver runs get it (a
worker without daskgen still starts and serves other clients).
"""

from __future__ import annotations

import pytest
import realcluster
from parity.test_namespaces import *  # noqa: F403
from parity.test_runtime_env import *  # noqa: F403
from parity.test_runtime_env import _project, make_wheel
from realcluster import HANG, start_cluster

import daskgen

pytestmark = pytest.mark.daskgen_only


@pytest.fixture
def ray(on_real_cluster):
    """daskgen connected to the module's real cluster (``conftest.real_cluster``)."""
    return on_real_cluster


@pytest.fixture
def reinit(ray, real_cluster):
    """``reinit(**init_keywords)``: daskgen connected again to the real cluster with them."""

    def start(**keywords):
        daskgen.shutdown()
        daskgen.init(address=real_cluster.address, **keywords)

    yield start
    daskgen.shutdown()


# ------------------------------------------------------------------ a shared cluster's view


def _process_state():
    """By value: what a worker process looks like to any of its clients."""

    def state():
        import importlib.util
        import os
        import sys

        modules = ("workmod", "parity_pkg", "tinyparity")
        return (
            os.environ.get("JOBV"),
            os.getcwd(),
            [p for p in sys.path if "daskgen-" in p],
            [m for m in modules if m in sys.modules],
            [m for m in modules if importlib.util.find_spec(m) is not None],
        )

    return state


def _names_on_scheduler():
    def names(dask_scheduler):
        return sorted(dask_scheduler.plugins), sorted(dask_scheduler.worker_plugins)

    return names


def _local_files():
    def files(dask_worker):
        import os

        return sorted(os.listdir(dask_worker.local_directory))

    return files


def _path_exists():
    def exists(path):
        import os

        return os.path.exists(path)

    return exists


def _plus_one():
    def plus_one(x):
        return x + 1

    return plus_one


def _uses_everything(dg):
    @dg.remote
    def everything():
        import os

        import parity_pkg
        import tinyparity
        import workmod

        with open("data/greeting.txt") as f:
            greeting = f.read().strip()
        return os.environ["JOBV"], workmod.VALUE, greeting, parity_pkg.X, tinyparity.WHO

    return everything


EVERYTHING = ("job", "from-working-dir", "hello", "package", "tiny")


def test_another_client_sees_nothing_of_a_drivers_runtime_env_and_shutdown_removes_it(dg, tmp_path):
    work, package, _ = _project(tmp_path)
    runtime_env = {
        "env_vars": {"JOBV": "job"},
        "working_dir": str(work),
        "py_modules": [str(package)],
        "pip": [make_wheel(str(tmp_path))],
    }
    with start_cluster(tmp_path / "cluster", n_workers=1, nanny=True) as cluster:
        with cluster.client(set_as_default=False) as plain:
            before = plain.run(_process_state())
            before_plugins = plain.run_on_scheduler(_names_on_scheduler())
            dg.init(address=cluster.address, runtime_env=runtime_env)
            pip_root = dg._runtime.session.shipped.pip_root
            everything = _uses_everything(dg)
            assert dg.get([everything.remote() for _ in range(3)], timeout=HANG) == [EVERYTHING] * 3
            # The worker process is as it was for everyone else once the calls have run.
            assert plain.run(_process_state()) == before
            assert plain.submit(_plus_one(), 1).result(timeout=HANG) == 2
            assert all(plain.run(_path_exists(), pip_root).values())

            dg.shutdown()
            scheduler_plugins, worker_plugins = plain.run_on_scheduler(_names_on_scheduler())
            assert worker_plugins == before_plugins[1]  # no UploadFile, no PipInstall left
            assert [p for p in scheduler_plugins if "pip" in p] == []
            assert not any(plain.run(_path_exists(), pip_root).values())
            assert not plain.run_on_scheduler(_path_exists(), pip_root)
            # A worker joining now gets nothing of it.
            old = set(plain.scheduler_info()["workers"])
            cluster.start_worker()
            cluster.wait_for_workers(2)
            (new,) = set(plain.scheduler_info()["workers"]) - old
            assert not [f for f in plain.run(_local_files(), workers=[new])[new] if "daskgen" in f]


def test_workers_joining_while_the_driver_runs_get_its_runtime_env(dg, tmp_path, venv):
    work, package, _ = _project(tmp_path)
    runtime_env = {
        "env_vars": {"JOBV": "job"},
        "working_dir": str(work),
        "py_modules": [str(package)],
        "pip": [make_wheel(str(tmp_path))],
    }
    with start_cluster(tmp_path / "cluster", n_workers=1, nanny=True) as cluster:
        dg.init(address=cluster.address, runtime_env=runtime_env)
        first = cluster.workers[0]
        with cluster.client(set_as_default=False) as plain:
            old = set(plain.scheduler_info()["workers"])
            cluster.start_worker()
            without_daskgen = cluster.start_worker(venv=venv)
            cluster.wait_for_workers(3)
            info = plain.scheduler_info()["workers"]
            assert all(w["status"] == "running" for w in info.values()), info
            joined = sorted(set(info) - old)
            files = plain.run(_local_files(), workers=joined)
            assert all(any(f.startswith("daskgen-working-dir-") for f in n) for n in files.values())
            # Both serve a plain client (the one without daskgen got the files too).
            done = [plain.submit(_plus_one(), 1, workers=[a], pure=False) for a in joined]
            assert [d.result(timeout=HANG) for d in done] == [2, 2]
        assert without_daskgen.poll() is None
        # With the first worker gone, daskgen's calls run on the one that joined later.
        cluster.kill_worker(first.pid)
        everything = _uses_everything(dg)
        assert dg.get(everything.remote(), timeout=HANG) == EVERYTHING


@pytest.fixture(scope="module")
def venv():
    """A Python with this machine's Dask and no daskgen (built once, cached)."""
    return realcluster.make_venv_without_daskgen()
