"""Every check of what a caller passes: ``@remote(...)``, ``.options(...)`` and actor method
keywords, and the timeouts of ``get``/``wait``/``next``.

Every bad value is rejected when the decorator, ``.options()`` or the call runs, naming the
option, so a mistake never surfaces later as a hang or a failure on a worker.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

from ._job import check_actor_namespace, check_runtime_env

DEFAULTS: dict[str, Any] = {
    "num_returns": None,
    "num_cpus": 1,
    "num_gpus": 0,
    "resources": None,
    "max_retries": 3,
    "retry_exceptions": False,
    "name": None,
    "_generator_backpressure_num_objects": None,
}
# Accepted so Ray code runs, but they mean nothing on Dask: warned about once.
IGNORED = ("memory", "_metadata", "label_selector")
ACTOR_OPTIONS = (
    "max_concurrency",
    "get_if_exists",
    "lifetime",
    "namespace",
    "max_restarts",
    "max_task_retries",
    "max_pending_calls",
    "concurrency_groups",
    "_actor_generator_backpressure_num_objects",
)
# Options of remote functions that actors do not take (Ray rejects them on a class).
TASK_ONLY_OPTIONS = (
    "num_returns",
    "max_retries",
    "retry_exceptions",
    "_generator_backpressure_num_objects",
)
_warned: set[str] = set()


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_num_returns(v: Any) -> None:
    if v is None or v in ("dynamic", "streaming"):
        return
    if isinstance(v, str):
        raise ValueError(f"num_returns must be an int >= 0, 'dynamic' or 'streaming', not {v!r}")
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(
            f"num_returns must be an int >= 0, 'dynamic' or 'streaming', not {v!r} "
            f"({type(v).__name__})"
        )
    if v < 0:
        raise ValueError(f"num_returns must be an int >= 0, 'dynamic' or 'streaming', not {v}")


def _check_amount(name: str, v: Any) -> None:
    if not _is_number(v):
        raise TypeError(f"{name} must be a number >= 0, not {v!r}")
    if v < 0:
        raise ValueError(f"{name} must be >= 0, not {v!r}")


def _check_resources(v: Any) -> None:
    if v is None:
        return
    if not isinstance(v, dict):
        raise TypeError(f"resources must be a dict of name -> amount, not {type(v).__name__}")
    for name, amount in v.items():
        if not isinstance(name, str):
            raise TypeError(f"resources keys must be str, not {name!r}")
        if name in ("CPU", "GPU"):
            raise ValueError(
                "Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' and 'GPU' in "
                "'resources' keyword"
            )
        _check_amount(f"resources[{name!r}]", amount)


def _check_max_retries(v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"max_retries must be an int >= -1, not {v!r}")
    if v < -1:
        raise ValueError(f"max_retries must be >= -1 (-1 retries forever), not {v}")


def _check_retry_exceptions(v: Any) -> None:
    if isinstance(v, bool):
        return
    if isinstance(v, (list, tuple)) and all(
        isinstance(e, type) and issubclass(e, BaseException) for e in v
    ):
        return
    raise TypeError(f"retry_exceptions must be a bool or a list of exception types, not {v!r}")


def _check_scheduling_strategy(v: Any) -> None:
    """None, "DEFAULT", "SPREAD", or a strategy object of ``daskgen.util.scheduling_strategies``
    (each marks itself with ``_daskgen_strategy``; they live in the client layer)."""
    if v is None or v in ("DEFAULT", "SPREAD"):
        return
    if isinstance(v, str):
        raise ValueError(
            f'Invalid scheduling_strategy value {v}. Valid values are ["DEFAULT" | "SPREAD" '
            "| PlacementGroupSchedulingStrategy | NodeAffinitySchedulingStrategy]"
        )
    if getattr(type(v), "_daskgen_strategy", None) is None:
        raise TypeError(
            "The type of keyword 'scheduling_strategy' must be (None, str, "
            "PlacementGroupSchedulingStrategy, NodeAffinitySchedulingStrategy), but received "
            f"type {type(v)}"
        )


def _check_name(v: Any) -> None:
    if v is not None and (not isinstance(v, str) or not v):
        raise TypeError(f"name must be a non-empty str, not {v!r}")


def _check_backpressure(v: Any) -> None:
    if v is None or v == -1:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"_generator_backpressure_num_objects must be an int > 0, not {v!r}")
    if v <= 0:
        raise ValueError(
            f"_generator_backpressure_num_objects must be > 0 (or -1 for no limit), not {v}"
        )


def _check_int_or_none(name: str, v: Any) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
        raise TypeError(
            f"The type of keyword '{name}' must be (<class 'int'>, <class 'NoneType'>), but "
            f"received type {type(v)}"
        )


def _check_actor_backpressure(v: Any) -> None:
    name = "_actor_generator_backpressure_num_objects"
    _check_int_or_none(name, v)
    if v is not None and v != -1 and v <= 0:
        raise ValueError(
            f"{name} must be > 0 to cap the actor's total unconsumed generator objects, or -1 "
            f"to disable. Got {v}."
        )


def _check_lifetime(v: Any) -> None:
    if v not in (None, "detached", "non_detached"):
        raise ValueError(
            "actor `lifetime` argument must be one of 'detached', 'non_detached' and 'None'."
        )


def _check_concurrency_groups(v: Any) -> None:
    if v is None:
        return
    if not isinstance(v, dict):
        raise TypeError(
            f"concurrency_groups must be a dict of group name -> max concurrency, not {v!r}"
        )
    for name, limit in v.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"concurrency_groups keys must be non-empty str, not {name!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(
                f"concurrency_groups[{name!r}] must be an int >= 1 (its max concurrency), not "
                f"{limit!r}"
            )


def _check_restarts(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < -1:
        raise ValueError(f"{name} must be an int >= -1 (-1: without limit), not {v!r}")


_ACTOR_CHECKS = {
    "lifetime": _check_lifetime,
    "max_pending_calls": lambda v: _check_int_or_none("max_pending_calls", v),
    "concurrency_groups": _check_concurrency_groups,
    "_actor_generator_backpressure_num_objects": _check_actor_backpressure,
    "max_restarts": lambda v: _check_restarts("max_restarts", v),
    "max_task_retries": lambda v: _check_restarts("max_task_retries", v),
    "namespace": check_actor_namespace,
}

_CHECKS = {
    "num_returns": _check_num_returns,
    "num_cpus": lambda v: _check_amount("num_cpus", v),
    "num_gpus": lambda v: _check_amount("num_gpus", v),
    "resources": _check_resources,
    "max_retries": _check_max_retries,
    "retry_exceptions": _check_retry_exceptions,
    "name": _check_name,
    "scheduling_strategy": _check_scheduling_strategy,
    "_generator_backpressure_num_objects": _check_backpressure,
    "enable_task_events": lambda v: None,  # Ray's dashboard events: nothing to switch off here
    "runtime_env": lambda v: check_runtime_env(v, job_level=False),
}


def validate(options: dict[str, Any], *, kind: str = "remote functions") -> dict[str, Any]:
    """Check ``options`` and return them without the ignored ones (warned about once each)."""
    actors = kind == "actors"
    checks = {**_CHECKS, **_ACTOR_CHECKS} if actors else _CHECKS
    if actors:
        checks = {k: c for k, c in checks.items() if k not in TASK_ONLY_OPTIONS}
    valid = sorted({*checks, *IGNORED, *(ACTOR_OPTIONS if actors else ())})
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key in IGNORED:
            if key not in _warned:
                _warned.add(key)
                warnings.warn(
                    f"daskgen ignores the option {key!r}: Dask schedules by data locality and "
                    "worker resources instead.",
                    UserWarning,
                    stacklevel=3,
                )
            continue
        check = checks.get(key)
        if check is None and not (actors and key in ACTOR_OPTIONS):
            raise ValueError(f"Invalid option keyword {key} for {kind}. Valid ones are {valid}.")
        if check is not None:
            check(value)
        out[key] = value
    return out


def dask_resources(options: dict[str, Any], cluster: dict[str, float]) -> dict[str, float] | None:
    """Ray's num_cpus/num_gpus/resources as Dask worker resource restrictions.

    ``CPU`` is requested only from clusters whose workers declare it (daskgen's embedded cluster
    does); on a plain Dask cluster a task's thread is its CPU, and asking for an undeclared
    ``CPU`` would leave every task waiting forever.
    """
    out: dict[str, float] = {}
    cpus = options.get("num_cpus", 1)
    if cpus and "CPU" in cluster:
        out["CPU"] = cpus
    gpus = options.get("num_gpus", 0)
    if gpus:
        out["GPU"] = gpus
    for name, amount in (options.get("resources") or {}).items():
        if amount:
            out[name] = amount
    return out or None


def resolve_mode(num_returns: Any, is_generator: bool, what: str) -> tuple[str, int]:
    """How a call's results come back: ``("plain" | "static" | "dynamic" | "streaming", N)``.

    A generator streams by default; ``num_returns=N`` on a generator (or N >= 2 on a plain
    function) gives N refs published one by one; "dynamic" and "streaming" need a generator.
    """
    if num_returns in ("dynamic", "streaming") and not is_generator:
        raise ValueError(
            f"num_returns={num_returns!r} needs a generator, but {what} does not yield."
        )
    if num_returns is None:
        return ("streaming", 0) if is_generator else ("plain", 1)
    if isinstance(num_returns, str):
        return num_returns, 0
    if is_generator or num_returns >= 2:
        return "static", num_returns
    return "plain", num_returns


def worker_fits(wanted: dict[str, float], declared: dict[str, float]) -> bool:
    """Whether one worker declaring ``declared`` can run a task that needs ``wanted`` (Dask
    places a task on one worker: totals across workers do not help)."""
    return all(declared.get(r, 0) >= amount for r, amount in wanted.items())


# Keywords of ``@method(...)``, and of ``handle.method.options(...)`` (which also takes a name).
METHOD_DECORATOR_OPTIONS = (
    "num_returns",
    "_generator_backpressure_num_objects",
    "concurrency_group",
    "enable_task_events",
)
METHOD_CALL_OPTIONS = (*METHOD_DECORATOR_OPTIONS, "name")


def validate_method(options: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """Check an actor method's options (only ``allowed`` keywords)."""
    unknown = set(options) - set(allowed)
    if unknown:
        raise ValueError(
            f"Invalid option keyword {sorted(unknown)[0]} for actor methods. "
            f"Valid ones are {sorted(allowed)}."
        )
    group = options.get("concurrency_group")
    if group is not None and (not isinstance(group, str) or not group):
        raise TypeError(f"concurrency_group must be a non-empty str, not {group!r}")
    rest = validate({k: v for k, v in options.items() if k != "concurrency_group"})
    return {**rest, "concurrency_group": group} if "concurrency_group" in options else rest


def check_max_concurrency(value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"max_concurrency must be an int >= 1, not {value!r}")


def check_timeout(timeout: Any, name: str = "timeout") -> float | None:
    """``None`` or a number of seconds >= 0; anything else is the caller's mistake."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{name} must be None or a number of seconds, not {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{name} must be >= 0, not {timeout!r}")
    return float(timeout)
