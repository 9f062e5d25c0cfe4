"""``python -m daskgen script.py`` runs a script written for Ray (``import ray``, Ray's module
names) unchanged, on daskgen, with its arguments, its exit status and its errors as Python
would give them, and an output with nothing but the script's own (a caught task error is not
logged again by the workers); and Ray itself is not imported. daskgen only."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.daskgen_only

HANG = 120

SCRIPT = textwrap.dedent(
    """
    import sys

    import ray
    import ray.exceptions
    from ray.actor import ActorHandle
    from ray.util import ActorPool
    from ray.util.queue import Queue

    from helper import double  # a module next to the script, as with `python script.py`

    ray.init(num_cpus=2)

    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, k):
            self.n += k
            return self.n

        def echo(self, v):
            return v

    def use(counter: ActorHandle) -> int:
        return ray.get(counter.add.remote(2))

    @ray.remote
    def boom():
        raise ValueError("boom")

    print("args", sys.argv[1:])
    print("squares", ray.get([square.remote(i) for i in range(4)]))
    print("counter", use(Counter.remote()))
    pool = ActorPool([Counter.remote(), Counter.remote()])
    print("pool", sorted(pool.map_unordered(lambda a, v: a.echo.remote(v), [1, 2, 3])))
    q = Queue()
    q.put(double(21))
    print("queue", q.get())
    try:
        ray.get(boom.remote())
    except ray.exceptions.RayTaskError as error:
        print("error", type(error.cause).__name__)
    print("ray is daskgen", ray.__name__, "real ray imported", "ray._raylet" in sys.modules)
    ray.shutdown()
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    """
)


def _run(tmp_path, *args):
    (tmp_path / "script.py").write_text(SCRIPT)
    (tmp_path / "helper.py").write_text("def double(x):\n    return 2 * x\n")
    return subprocess.run(
        [sys.executable, "-m", "daskgen", str(tmp_path / "script.py"), *args],
        capture_output=True,
        text=True,
        timeout=HANG,
        cwd=tmp_path.parent,
    )


def test_a_ray_script_runs_unchanged_on_daskgen(tmp_path):
    proc = _run(tmp_path, "first", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "args ['first', '0']" in out
    assert "squares [0, 1, 4, 9]" in out
    assert "counter 2" in out
    assert "pool [1, 2, 3]" in out
    assert "queue 42" in out
    assert "error ValueError" in out
    assert "ray is daskgen daskgen real ray imported False" in out
    # the caught task error is not logged by the embedded workers as well (Dask's "Compute
    # Failed" block, with daskgen's frames): a person reads each error once, as on Ray
    assert "Compute Failed" not in proc.stderr and "Traceback" not in proc.stderr
    # a program with actors ends quietly (no CRITICAL lines from closing connections)
    assert "CRITICAL" not in proc.stderr, proc.stderr[-3000:]


def test_the_scripts_exit_status_and_usage(tmp_path):
    assert _run(tmp_path, "x", "3").returncode == 3
    usage = subprocess.run(
        [sys.executable, "-m", "daskgen"], capture_output=True, text=True, timeout=HANG
    )
    assert usage.returncode == 2 and "usage: python -m daskgen script.py" in usage.stderr
