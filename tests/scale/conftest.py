"""Scale tests: the CI size always runs; the full size (SPEC 7: 10k tasks, 1,000 generators,
100k yields) is marked ``slow`` and runs only with ``DASKGEN_FULL_SCALE=1``."""

from __future__ import annotations


def pytest_configure(config):
    # Registered here because pyproject.toml's marker list is not ours to edit.
    config.addinivalue_line(
        "markers", "slow: full-size scale test, skipped unless DASKGEN_FULL_SCALE=1 is set"
    )
