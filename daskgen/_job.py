"""What a driver's job gives every call it makes, as Ray's job does: its namespace and its
``runtime_env``. Shared by the driver, which checks and prepares them, and the workers, which
apply them (every process; imports nothing of daskgen).

A call carries its :class:`Job` (a namespace string and, only when there is one, an
:class:`EnvSpec`): a task keeps its caller's, so that the calls a task makes, the actors it
creates and the names it looks up are in its driver's namespace, and a task runs in the
environment its call asked for (``_worker.runtime_env``), inherited by the calls it makes.

``runtime_env`` is checked here, naming the wrong entry, when ``init``, ``@remote`` or
``.options()`` runs; what ships files or packages to the workers is ``_client.runtime_env``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

# What daskgen applies; every other key of a runtime_env is accepted and ignored (warned once).
APPLIED = ("env_vars", "working_dir", "py_modules", "pip", "excludes")
# Ray's keys daskgen knows it does not apply, and what to do instead on Dask.
_INSTEAD = {
    "conda": "install the packages in the workers' environment (or a conda environment they "
    "run in)",
    "container": "run the workers in that image",
    "image_uri": "run the workers in that image",
    "uv": "use 'pip' (installed with Dask's PipInstall)",
}
_warned: set[str] = set()


@dataclass(frozen=True)
class EnvSpec:
    """A ``runtime_env`` as the workers apply it (small: it travels with every call).

    ``working_dir`` and ``py_modules`` name the archives shipped to every worker
    (``_client.runtime_env``); ``pip`` is the directory the packages were installed into on
    every host."""

    env_vars: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    py_modules: tuple[str, ...] = ()
    pip: str | None = None

    def __bool__(self) -> bool:
        return bool(self.env_vars or self.working_dir or self.py_modules or self.pip)


class Job(NamedTuple):
    """The namespace and environment a call runs in (``_runtime.current_job`` in tasks)."""

    namespace: str
    env: EnvSpec | None = None


def merge(parent: EnvSpec | None, child: EnvSpec | None) -> EnvSpec | None:
    """Ray's inheritance: the child's entries replace the parent's, but ``env_vars`` are
    merged (the child's value wins for a name both set)."""
    if not child:
        return parent or None
    if not parent:
        return child
    env_vars = {**dict(parent.env_vars), **dict(child.env_vars)}
    return EnvSpec(
        env_vars=tuple(sorted(env_vars.items())),
        working_dir=child.working_dir or parent.working_dir,
        py_modules=child.py_modules or parent.py_modules,
        pip=child.pip or parent.pip,
    )


# ---------------------------------------------------------------------------- namespaces


def check_namespace(namespace: Any, message: str = "namespace must be None or a string.") -> None:
    """Ray's checks of a namespace (``init``, ``get_actor``): None or a non-empty str."""
    if namespace is None:
        return
    if not isinstance(namespace, str):
        raise TypeError(message)
    if not namespace:
        raise ValueError('"" is not a valid namespace. Pass None to not specify a namespace.')


def check_actor_namespace(namespace: Any) -> None:
    """The actor option ``namespace=`` (Ray's wording for an option of the wrong type)."""
    check_namespace(
        namespace,
        "The type of keyword 'namespace' must be (<class 'str'>, <class 'NoneType'>), but "
        f"received type {type(namespace)}",
    )


# --------------------------------------------------------------------------- runtime_env


def check_runtime_env(value: Any, *, job_level: bool) -> dict[str, Any] | None:
    """Check a ``runtime_env`` (``init``'s if ``job_level``, else a task's or actor's option)
    and return the part daskgen applies; warn once about each key it ignores.

    Local directories and files (``working_dir``, ``py_modules``) are shipped by ``init`` only,
    as on Ray, which rejects them in a task's options."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(
            "The type of keyword 'runtime_env' must be (<class 'dict'>, <class 'NoneType'>), "
            f"but received type {type(value)}"
        )
    _check_env_vars(value.get("env_vars"))
    if value.get("working_dir") is not None:
        _check_working_dir(value["working_dir"], job_level)
    if value.get("py_modules") is not None:
        _check_py_modules(value["py_modules"], job_level)
    if value.get("pip") is not None:
        pip_packages(value["pip"])
    excludes = value.get("excludes")
    if excludes is not None and (
        not isinstance(excludes, list) or not all(isinstance(e, str) for e in excludes)
    ):
        raise TypeError(f"runtime_env['excludes'] must be a list of str, got {type(excludes)}")
    ignored = sorted(k for k, v in value.items() if k not in APPLIED and v is not None)
    for key in ignored:
        _warn_ignored(key, "init" if job_level else "the call's options")
    return {k: v for k, v in value.items() if k in APPLIED and v is not None} or None


def _check_env_vars(env_vars: Any) -> None:
    if env_vars is None:
        return
    if not isinstance(env_vars, dict):
        raise TypeError(
            f"runtime_env['env_vars'] must be of type Dict[str, str], got {type(env_vars)}"
        )
    for name, value in env_vars.items():
        for what, item in (("key", name), ("value", value)):
            if not isinstance(item, str):
                raise TypeError(
                    "runtime_env['env_vars'] must be of type Dict[str, str], but the "
                    f"{what} {item!r} is of type {type(item)}"
                )


def _is_uri(path: str) -> bool:
    return "://" in path


def _local_only(path: str, field: str, job_level: bool) -> None:
    """What Ray says of a local path in a task's options, and what daskgen says of a URI."""
    if not job_level and not _is_uri(path):
        raise ValueError(
            f"{path} is not a valid URI. Passing directories or modules to be dynamically "
            "uploaded is only supported at the job level (i.e., passed to `init`)."
        )
    if _is_uri(path):
        raise ValueError(
            f"runtime_env[{field!r}]={path!r}: daskgen ships local directories and files only "
            "(given to init). Put remote files where the workers can read them (a shared "
            "filesystem, the workers' image) instead."
        )


def _check_working_dir(path: Any, job_level: bool) -> None:
    if not isinstance(path, str):
        raise TypeError(f"`working_dir` must be a string, got {type(path)}.")
    _local_only(path, "working_dir", job_level)
    if not (os.path.isdir(path) or (os.path.isfile(path) and path.endswith(".zip"))):
        raise ValueError(
            f"directory {path} must be an existing directory or a supported archive (.zip): "
            "runtime_env['working_dir']"
        )


def _check_py_modules(modules: Any, job_level: bool) -> None:
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise TypeError(f"`py_modules` must be a list of strings, got {type(modules)}.")
    for path in modules:
        _local_only(path, "py_modules", job_level)
        if not (os.path.isdir(path) or (os.path.isfile(path) and path.endswith(_MODULE_FILES))):
            raise ValueError(
                "py_modules entry must be a .py file, a directory, or a .whl file; got "
                f"{path} (daskgen also takes a .zip)"
            )


_MODULE_FILES = (".py", ".whl", ".zip")


def pip_packages(pip: Any) -> tuple[list[str], list[str]]:
    """The requirement lines and extra pip options of ``runtime_env['pip']``: a list of
    requirements, a requirements file's path, or ``{"packages": ..., "pip_install_options":
    [...]}`` (``pip_check`` and ``pip_version`` are ignored, warned once)."""
    options: list[str] = []
    if isinstance(pip, dict):
        if "packages" not in pip:
            raise ValueError("runtime_env['pip'] as a dict must have a 'packages' entry")
        options = pip.get("pip_install_options") or []
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise TypeError("runtime_env['pip']['pip_install_options'] must be a list of str")
        for key in sorted(set(pip) - {"packages", "pip_install_options"}):
            _warn_ignored(f"pip.{key}", "runtime_env['pip']")
        pip = pip["packages"]
    if isinstance(pip, str):
        if not os.path.isfile(pip):
            raise ValueError(f"{pip} is not a valid file (runtime_env['pip'])")
        with open(pip) as f:
            lines = [line.strip() for line in f]
        return [line for line in lines if line and not line.startswith("#")], options
    if not isinstance(pip, list) or not all(isinstance(p, str) for p in pip):
        raise TypeError(f"runtime_env['pip'] must be of type str or List[str], got {type(pip)}")
    return list(pip), options


def _warn_ignored(key: str, where: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    instead = _INSTEAD.get(key, "set the workers' environment up before they start")
    warnings.warn(
        f"runtime_env[{key!r}] is ignored (in {where}): daskgen applies env_vars, "
        f"working_dir, py_modules and pip only. On Dask, {instead}.",
        UserWarning,
        stacklevel=5,
    )
