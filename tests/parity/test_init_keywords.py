"""Ray's own ``init`` keywords that scripts pass (``include_dashboard``, ``logging_level``,
``namespace``, ``runtime_env``'s ``env_vars``, ``object_store_memory``) are accepted and do
what they mean, on both backends; ``address="auto"`` without a cluster says so."""

from __future__ import annotations

import contextlib
import logging
import os

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
