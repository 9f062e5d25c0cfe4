"""Every example in examples/ runs on its own, on the embedded cluster, and prints its results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.daskgen_only

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_quickstart_runs_the_seed_examples_unchanged_and_prints_their_results():
    out = _run("quickstart.py")
    assert "generator version: [(100000000, 1), (100000000, 1), (100000000, 1)]" in out
    assert "yielded return value 2" in out
    assert "Split array of size" in out and "blocks of size 1000 each." in out
    assert "get_size of the dynamic ref" in out
    assert "get_size of the generator itself" in out
    assert "static num_returns: the remaining refs raise Exception: error" in out
    assert "dynamic: the final ref raises Exception: error" in out
    assert "surplus yields: Task returned 3 objects, but num_returns=2." in out
