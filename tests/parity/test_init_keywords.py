"""Ray's own ``init`` keywords that scripts pass (``include_dashboard``, ``logging_level``,
``namespace``, ``runtime_env``'s ``env_vars``, ``object_store_memory``) are accepted and do
what they mean, on both backends; ``address="auto"`` without a cluster says so. daskgen only:
``address="auto"`` finds the scheduler in ``DASKGEN_ADDRESS`` or Dask's ``scheduler-address``
setting, and every other keyword of Ray 2.60's ``init`` is accepted or names the Dask way."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

import pytest

HANG = 120


def test_rays_init_keywords_run_a_script_unchanged(ray, backend):
    ray.shutdown()
    try:
        # daskgen says once that object_store_memory has no effect (no object store)
        noted = pytest.warns(UserWarning) if backend != "ray" else contextlib.nullcontext()
        with noted:
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                logging_level=logging.WARNING,
                namespace="parity-space",
                runtime_env={"env_vars": {"DASKGEN_PARITY_VAR": "set"}},
                object_store_memory=100 * 2**20,
            )

        @ray.remote
        def read_env():
            return os.environ.get("DASKGEN_PARITY_VAR")

        assert ray.get(read_env.remote(), timeout=HANG) == "set"
        assert ray.get_runtime_context().namespace == "parity-space"
    finally:
        ray.shutdown()


def test_an_auto_address_without_a_cluster_is_a_connection_error(ray, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("DASKGEN_ADDRESS", raising=False)
    ray.shutdown()
    with pytest.raises(ConnectionError, match="Could not find any running"):
        ray.init(address="auto")


@pytest.fixture
def scheduler_address():
    """The address of a small in-process Dask cluster (daskgen's plugin goes on at init)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


@pytest.mark.daskgen_only
def test_an_auto_address_connects_to_daskgen_address_or_dasks_setting(
    ray, monkeypatch, scheduler_address
):
    import dask

    monkeypatch.delenv("DASKGEN_ADDRESS", raising=False)
    ray.shutdown()
    try:
        with dask.config.set({"scheduler-address": scheduler_address}):
            ray.init(address="auto")
            assert ray.get_client().scheduler.address == scheduler_address
        ray.shutdown()
        monkeypatch.setenv("DASKGEN_ADDRESS", scheduler_address)
        ray.init(address="auto")
        assert ray.get_client().scheduler.address == scheduler_address
    finally:
        ray.shutdown()


# Every keyword of Ray 2.60's init (its signature and the ones it takes from **kwargs) besides
# address, num_cpus, num_gpus, resources and ignore_reinit_error, which are daskgen's own too.
RAYS_INIT_KEYWORDS = {
    "labels": {"zone": "a"},
    "object_store_memory": 10**8,
    "local_mode": True,
    "include_dashboard": False,
    "dashboard_host": "0.0.0.0",
    "dashboard_port": 8265,
    "job_config": object(),
    "configure_logging": True,
    "logging_level": logging.WARNING,
    "logging_format": "%(message)s",
    "logging_config": object(),
    "log_to_driver": True,
    "namespace": "keywords",
    "runtime_env": {"env_vars": {"A": "1"}},
    "enable_resource_isolation": False,
    "cgroup_path": "/sys/fs/cgroup",
    "system_reserved_cpu": 1.0,
    "system_reserved_memory": 10**9,
    "proxy_server_url": "http://proxy",
    "_memory": 10**9,
    "_metrics_export_port": 8080,
    "_node_ip_address": "127.0.0.1",
    "_node_name": "node",
    "_plasma_directory": "/tmp",
    "_skip_env_hook": True,
    "_system_config": {},
    "_temp_dir": None,
    "storage": "/tmp/storage",
}


UNSUPPORTED = ("dashboard_host", "dashboard_port", "job_config", "local_mode", "storage")


@pytest.mark.daskgen_only
def test_each_of_rays_init_keywords_works_or_names_the_dask_way(ray):
    """Accepted (applied, or warned once as having no effect), or a TypeError naming what to
    use on Dask: never the cluster's own TypeError for a keyword it does not know."""
    ray.shutdown()
    for keyword in UNSUPPORTED:
        with pytest.raises(
            TypeError, match=f"init\\(\\) does not support Ray's {keyword}=; on Dask"
        ):
            ray.init(num_cpus=1, **{keyword: RAYS_INIT_KEYWORDS[keyword]})
        assert not ray.is_initialized()
    accepted = {k: v for k, v in RAYS_INIT_KEYWORDS.items() if k not in UNSUPPORTED}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ray.init(num_cpus=1, **accepted)
        assert ray.get_runtime_context().namespace == "keywords"
    finally:
        ray.shutdown()
