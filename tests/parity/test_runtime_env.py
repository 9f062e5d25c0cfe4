"""``runtime_env`` as Ray 2.60 applies it: ``env_vars`` in the calls they cover (the job's in
every call, a call's own merged over them, inherited by the calls a task makes), and gone from
the worker after; ``working_dir`` (the calls' current directory, importable) and ``py_modules``
given to ``init``; ``pip`` packages importable in the calls that ask for them only; bad values
rejected at the call, naming the entry.

Everything here passes on Ray 2.60 and on daskgen (``DASKGEN_TEST_BACKEND=ray``; Ray's ``pip``
needs the ``virtualenv`` package); the ``reinit`` fixture restarts the backend with other
``init`` keywords (``tests/test_jobs_real_cluster.py`` runs this file on a real cluster).
"""

from __future__ import annotations

import os
import sys
import zipfile

import pytest
from realcluster import HANG

NAMES = ("JOBV", "BOTH", "TASKV")


@pytest.fixture
def reinit(ray, backend):
    """``reinit(**init_keywords)``: the backend started again with them (shut down after)."""

    def start(**keywords):
        ray.shutdown()
        if backend == "ray":
            keywords.setdefault("include_dashboard", False)
        ray.init(num_cpus=2, **keywords)

    yield start
    ray.shutdown()


def _env_reader(ray):
    @ray.remote
    def env(*names):
        return {n: os.environ.get(n) for n in names}

    return env


def make_wheel(directory, name="tinyparity", source="WHO = 'tiny'\n"):
    """A pure-Python wheel of one module, built by hand (no build backend, no network)."""
    path = os.path.join(directory, f"{name}-0.1-py3-none-any.whl")
    info = f"{name}-0.1.dist-info"
    files = {
        f"{name}/__init__.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
        archive.writestr(f"{info}/RECORD", "".join(f"{m},,\n" for m in [*files, f"{info}/RECORD"]))
    return path


def test_a_calls_env_vars_apply_in_it_only(ray):
    env = _env_reader(ray)
    own = env.options(runtime_env={"env_vars": {"TASKV": "task"}})
    assert ray.get(own.remote("TASKV"), timeout=HANG) == {"TASKV": "task"}
    # The workers' environment is back as it was: no later call sees it.
    later = ray.get([env.remote("TASKV") for _ in range(6)], timeout=HANG)
    assert later == [{"TASKV": None}] * 6


def test_a_calls_env_vars_are_gone_after_it_raised(ray):
    env = _env_reader(ray)

    @ray.remote(runtime_env={"env_vars": {"TASKV": "failing"}})
    def fails():
        raise ValueError(os.environ["TASKV"])

    with pytest.raises(ValueError, match="failing"):
        ray.get(fails.remote(), timeout=HANG)
    assert ray.get([env.remote("TASKV") for _ in range(4)], timeout=HANG) == [{"TASKV": None}] * 4


def test_a_call_made_in_a_task_adds_its_own_env_vars_to_the_tasks(ray):
    env = _env_reader(ray)

    @ray.remote(runtime_env={"env_vars": {"BOTH": "outer", "JOBV": "outer"}})
    def outer():
        inner = env.options(runtime_env={"env_vars": {"BOTH": "inner", "TASKV": "inner"}})
        return ray.get(inner.remote(*NAMES))

    assert ray.get(outer.remote(), timeout=HANG) == {
        "JOBV": "outer",
        "BOTH": "inner",
        "TASKV": "inner",
    }


def test_an_actors_env_vars_apply_in_its_constructor_and_methods(ray):
    @ray.remote(runtime_env={"env_vars": {"ACTV": "actor"}})
    class Reader:
        def __init__(self):
            self.at_start = os.environ.get("ACTV")

        def read(self):
            return self.at_start, os.environ.get("ACTV"), os.environ.get("OTHER")

    assert ray.get(Reader.remote().read.remote(), timeout=HANG) == ("actor", "actor", None)
    # .options(runtime_env=...) replaces the class's, as on Ray.
    other = Reader.options(runtime_env={"env_vars": {"OTHER": "o"}}).remote()
    assert ray.get(other.read.remote(), timeout=HANG) == (None, None, "o")


def test_the_jobs_env_vars_merge_with_a_calls_and_reach_nested_calls(ray, reinit):
    reinit(runtime_env={"env_vars": {"JOBV": "job", "BOTH": "job"}})
    env = _env_reader(ray)

    @ray.remote
    def nested(*names):
        return ray.get(env.remote(*names))

    job_only = {"JOBV": "job", "BOTH": "job", "TASKV": None}
    merged = {"JOBV": "job", "BOTH": "task", "TASKV": "t"}
    own = {"env_vars": {"BOTH": "task", "TASKV": "t"}}
    assert ray.get(env.remote(*NAMES), timeout=HANG) == job_only
    assert ray.get(env.options(runtime_env=own).remote(*NAMES), timeout=HANG) == merged
    assert ray.get(nested.options(runtime_env=own).remote(*NAMES), timeout=HANG) == merged
    assert ray.get([env.remote(*NAMES) for _ in range(4)], timeout=HANG) == [job_only] * 4


def _project(root):
    """A working directory (a module, a data file) and two py_modules (a package, a file)."""
    work = root / "work"
    (work / "data").mkdir(parents=True)
    (work / "workmod.py").write_text("VALUE = 'from-working-dir'\n")
    (work / "data" / "greeting.txt").write_text("hello\n")
    package = root / "mods" / "parity_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("X = 'package'\n")
    single = root / "mods" / "parity_single.py"
    single.write_text("Y = 'single'\n")
    return work, package, single


def test_init_ships_working_dir_and_py_modules_to_tasks_and_actors(ray, reinit, tmp_path):
    work, package, single = _project(tmp_path)
    reinit(runtime_env={"working_dir": str(work), "py_modules": [str(package), str(single)]})

    @ray.remote
    def where():
        import parity_pkg
        import parity_single
        import workmod

        with open("data/greeting.txt") as f:  # relative to the working directory
            greeting = f.read().strip()
        return workmod.VALUE, greeting, parity_pkg.X, parity_single.Y

    @ray.remote
    class InWorkingDir:
        def read(self):
            import workmod

            with open(os.path.join("data", "greeting.txt")) as f:
                return workmod.VALUE, f.read().strip()

    expected = ("from-working-dir", "hello", "package", "single")
    assert ray.get([where.remote() for _ in range(4)], timeout=HANG) == [expected] * 4
    actor = InWorkingDir.remote()
    assert ray.get(actor.read.remote(), timeout=HANG) == ("from-working-dir", "hello")


def test_a_function_from_a_working_dir_module_runs_by_reference(ray, reinit, tmp_path):
    """A module the driver imports from the working directory is pickled by reference: the
    workers import it there."""
    work, _, _ = _project(tmp_path)
    (work / "workfuncs.py").write_text("def double(x):\n    return 2 * x\n")
    reinit(runtime_env={"working_dir": str(work)})
    sys.path.insert(0, str(work))
    try:
        import workfuncs

        assert ray.get(ray.remote(workfuncs.double).remote(21), timeout=HANG) == 42
    finally:
        sys.path.remove(str(work))
        sys.modules.pop("workfuncs", None)


def test_local_files_are_shipped_by_init_only(ray, tmp_path):
    @ray.remote
    def f():
        return 1

    for env in ({"working_dir": str(tmp_path)}, {"py_modules": [str(tmp_path)]}):
        with pytest.raises(ValueError, match="is not a valid URI. Passing directories or"):
            f.options(runtime_env=env)
        with pytest.raises(ValueError, match="only supported at the job level"):
            ray.remote(runtime_env=env)(lambda: 1)


@pytest.mark.parametrize(
    "env, error, message",
    [
        ("x", TypeError, "The type of keyword 'runtime_env' must be"),
        ({"env_vars": "x"}, TypeError, r"runtime_env\['env_vars'\] must be of type Dict"),
        ({"env_vars": {"A": 1}}, TypeError, r"runtime_env\['env_vars'\] must be of type Dict"),
        ({"working_dir": 3}, TypeError, "`working_dir` must be a string"),
        ({"py_modules": "x"}, TypeError, "`py_modules` must be a list of strings"),
        ({"pip": 3}, TypeError, r"runtime_env\['pip'\] must be of type str or List\[str\]"),
        ({"pip": "no-such-requirements.txt"}, ValueError, "is not a valid file"),
    ],
    ids=["not-a-dict", "env-vars", "env-var-value", "working-dir", "py-modules", "pip", "file"],
)
def test_bad_runtime_env_values_are_rejected_at_the_call(ray, env, error, message):
    @ray.remote
    def f():
        return 1

    with pytest.raises(error, match=message):
        f.options(runtime_env=env).remote()


def test_init_rejects_a_working_dir_or_module_that_does_not_exist(ray, tmp_path):
    ray.shutdown()
    with pytest.raises(ValueError, match="must be an existing directory or a supported archive"):
        ray.init(num_cpus=1, runtime_env={"working_dir": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="py_modules entry must be a .py file, a directory"):
        ray.init(num_cpus=1, runtime_env={"py_modules": [str(tmp_path / "nowhere")]})


def _pip_available(backend):
    if backend == "ray":
        pytest.importorskip("virtualenv", reason="Ray's pip runtime_env needs virtualenv")


def test_pip_packages_are_importable_in_the_calls_that_ask_for_them(ray, backend, tmp_path):
    _pip_available(backend)
    wheel = make_wheel(str(tmp_path))

    @ray.remote
    def who():
        import tinyparity

        return tinyparity.WHO

    assert ray.get(who.options(runtime_env={"pip": [wheel]}).remote(), timeout=HANG * 5) == "tiny"
    as_dict = {"pip": {"packages": [wheel]}}
    assert ray.get(who.options(runtime_env=as_dict).remote(), timeout=HANG * 5) == "tiny"
    with pytest.raises(ModuleNotFoundError):
        ray.get(who.remote(), timeout=HANG)  # not installed where the others run


def test_a_package_pip_cannot_install_is_a_runtime_env_setup_error(ray, backend, tmp_path):
    _pip_available(backend)

    @ray.remote
    def f():
        return 1

    missing = str(tmp_path / "no-such-package-0.1-py3-none-any.whl")
    with pytest.raises(ray.exceptions.RuntimeEnvSetupError) as failed:
        ray.get(f.options(runtime_env={"pip": [missing]}).remote(), timeout=HANG * 5)
    assert str(failed.value).startswith("Failed to set up runtime environment.")


@pytest.mark.daskgen_only
def test_pip_in_a_call_made_inside_a_task_must_be_the_drivers(ray, tmp_path):
    wheel = make_wheel(str(tmp_path))

    @ray.remote
    def who():
        import tinyparity

        return tinyparity.WHO

    @ray.remote
    def nested(pip):
        return ray.get(who.options(runtime_env={"pip": pip}).remote())

    with pytest.raises(ValueError, match="must be the one its driver installed"):
        ray.get(nested.remote([wheel]), timeout=HANG)
    # The same list the driver installed for the task is inherited, and may be named again.
    same = nested.options(runtime_env={"pip": [wheel]})
    assert ray.get(same.remote([wheel]), timeout=HANG * 5) == "tiny"
