"""Actors: ``@remote`` classes whose instance lives in one worker and runs method calls in order.

How an actor runs on Dask
-------------------------
Dask's own actors are not used: all actors of a worker share one thread there (a long method of
one blocks every other), and an ``ActorFuture`` cannot be a task dependency (dask/distributed
#4488). Instead:

* ``Cls.remote()`` picks a worker that has the requested resources (fewest daskgen actors first)
  and runs a creation task pinned to it. The instance then lives in that worker process, in an
  :class:`ActorHost` with its own executor: ``max_concurrency`` threads (1 by default, so calls
  run one at a time, in order), or, for a class with ``async def`` methods, its own event loop.
* Each ``handle.method.remote()`` is an ordinary Dask task pinned to that worker, so its result
  is a real key: other tasks can take it as an argument, and generator methods publish their
  yields exactly as generator tasks do. The call task leaves the worker's thread pool
  (``secede``) while the actor's executor runs the method, so a long method of one actor never
  holds a worker thread another actor needs.
* Calls from one handle carry a sequence number; the host starts them in that order even when
  Dask delivers the tasks in another.
* The scheduler extension records where each actor lives. When that worker leaves, or the actor
  is killed, every client is told, and pending and later calls raise ``ActorDiedError``.
"""

from __future__ import annotations

import inspect
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle
from distributed import Client, Future

from . import _dask_internals as dx
from ._actor_host import ActorCall, create_actor, kill_actor
from ._executor import Retry, TaskSpec
from ._lifecycle import get_client
from ._options import DEFAULTS, dask_resources, resolve_mode, validate, worker_fits
from ._protocol import Key, new_token
from .exceptions import ActorDiedError

_METHOD_OPTIONS = "__daskgen_method_options__"


def method(*args: Any, **options: Any) -> Any:
    """``@method(num_returns=...)`` on an actor method, as Ray's ``@ray.method``."""
    allowed = {"num_returns", "_generator_backpressure_num_objects"}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        unknown = set(options) - allowed
        if unknown:
            raise ValueError(
                f"Invalid option keyword {sorted(unknown)[0]} for actor methods. "
                f"Valid ones are {sorted(allowed)}."
            )
        validate(options)
        setattr(fn, _METHOD_OPTIONS, dict(options))
        return fn

    if args and callable(args[0]) and not options:
        return decorate(args[0])
    return decorate


@dataclass(frozen=True)
class _MethodMeta:
    is_generator: bool
    is_async: bool
    options: dict[str, Any]


def _methods_of(cls: type) -> dict[str, _MethodMeta]:
    out = {}
    for name, fn in inspect.getmembers(cls, predicate=callable):
        if name.startswith("__") and name != "__call__":
            continue
        out[name] = _MethodMeta(
            is_generator=inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn),
            is_async=inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn),
            options=dict(getattr(fn, _METHOD_OPTIONS, {})),
        )
    return out


# ------------------------------------------------------------------------------- client side


class ActorClass:
    """A class decorated with ``@remote``: create actors with ``.remote(...)``."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = validate(options, kind="actors")
        self._methods = _methods_of(cls)
        self._is_async = any(m.is_async for m in self._methods.values())
        mc = self._options.get("max_concurrency")
        if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or mc < 1):
            raise ValueError(f"max_concurrency must be an int >= 1, not {mc!r}")
        self.__name__ = cls.__name__
        self.__doc__ = cls.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._cls.__name__
        raise TypeError(
            f"Actors cannot be instantiated directly. Instead of '{name}()', use '{name}.remote()'."
        )

    def options(self, **options: Any) -> ActorClass:
        """The same class with some actor options changed (validated now)."""
        return ActorClass(self._cls, {**self._options, **options})

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """Create the actor on a worker and return its handle (does not wait for creation)."""
        opts = self._options
        name = opts.get("name")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, not {name!r}")
        client = get_client()
        if name is not None:
            existing = _lookup(client, name)
            if existing is not None:
                if opts.get("get_if_exists"):
                    return existing
                raise ValueError(f"The name {name} is already taken by another actor.")
        workers = {
            addr: dict(w.get("resources") or {})
            for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()
        }
        declared = {name for res in workers.values() for name in res}
        resources = dask_resources({**DEFAULTS, **opts}, dict.fromkeys(declared, 1.0))
        worker = _choose_worker(workers, resources or {})
        actor_id = new_token()
        max_concurrency = opts.get("max_concurrency") or (1000 if self._is_async else 1)
        handle = ActorHandle(actor_id, self._cls.__name__, self._methods, worker, self._is_async)
        from ._remote_function import pack_args

        packed, deps, lent = pack_args(f"{self._cls.__name__}.remote", args, kwargs)
        creation = client.submit(
            create_actor,
            actor_id,
            cloudpickle.dumps(self._cls),
            max_concurrency,
            self._is_async,
            packed,
            *(r._future for r in deps),
            key=f"{self._cls.__name__}-{actor_id}",
            workers=[worker],
            allow_other_workers=False,
            resources=resources,
            pure=False,
        )
        handle._creation = creation
        handle._lent = lent
        if name is not None:
            if not _register(client, name, handle) and opts.get("get_if_exists"):
                existing = _lookup(client, name)
                if existing is not None:
                    return existing
        return handle

    def __repr__(self) -> str:
        return f"ActorClass({self._cls.__name__})"


_placed: dict[str, int] = {}  # worker address -> actors this process placed there


def _choose_worker(workers: dict[str, dict[str, float]], resources: dict[str, float]) -> str:
    """The worker that has ``resources`` and hosts the fewest actors placed from here."""
    able = [addr for addr, declared in workers.items() if worker_fits(resources, declared)]
    if not able:
        raise ValueError(
            f"No worker can host this actor: it needs {resources}, and the workers declare "
            f"{list(workers.values())}."
        )
    choice = min(able, key=lambda a: (_placed.get(a, 0), a))
    _placed[choice] = _placed.get(choice, 0) + 1
    return choice


_dead: dict[str, str] = {}  # actor id -> why it died (this process's view)
_pending: dict[str, dict[Key, Client]] = {}  # actor id -> keys of calls maybe still running


def on_actor_died(actor: str, reason: str, **_: Any) -> None:
    """The clients' handler for ``daskgen-actor-died`` (on the client's event loop)."""
    _dead.setdefault(actor, reason)
    for key, client in _pending.pop(actor, {}).items():
        dx.key_set_error(client, key, ActorDiedError(_died_message(actor)))


def _died_message(actor_id: str) -> str:
    return f"The actor {actor_id} is dead: {_dead.get(actor_id, 'it was killed')}."


class ActorHandle:
    """A handle to an actor: ``handle.method.remote(...)`` calls a method; picklable."""

    def __init__(
        self,
        actor_id: str,
        class_name: str,
        methods: dict[str, _MethodMeta],
        worker: str,
        is_async: bool,
    ) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._worker = worker
        self._is_async = is_async
        self._handle_id = new_token()  # calls are ordered per handle
        self._seq = itertools.count()
        self._seq_lock = threading.Lock()
        self._creation: Future | None = None
        self._lent: list[Any] = []

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods", {})
        if name in methods:
            return ActorMethod(self, name, methods[name], {})
        raise AttributeError(f"'{self.__dict__.get('_class_name')}' actor has no method {name!r}")

    def _next_seq(self) -> int:
        with self._seq_lock:
            return next(self._seq)

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id})"

    def __reduce__(self) -> tuple[Any, ...]:
        state = (self._actor_id, self._class_name, self._methods, self._worker, self._is_async)
        return _rebuild_handle, state


def _rebuild_handle(*state: Any) -> ActorHandle:
    return ActorHandle(*state)


class ActorMethod:
    """``handle.method``: call it with ``.remote(...)``."""

    def __init__(
        self, handle: ActorHandle, name: str, meta: _MethodMeta, options: dict[str, Any]
    ) -> None:
        self._handle = handle
        self._name = name
        self._meta = meta
        self._options = validate({**meta.options, **options})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "Actor methods cannot be called directly. Instead of running "
            f"'object.{self._name}()', try 'object.{self._name}.remote()'."
        )

    def options(self, **options: Any) -> ActorMethod:
        unknown = set(options) - {"num_returns", "_generator_backpressure_num_objects", "name"}
        if unknown:
            raise ValueError(
                f"Invalid option keyword {sorted(unknown)[0]} for actor methods. Valid ones "
                "are ['_generator_backpressure_num_objects', 'name', 'num_returns']."
            )
        return ActorMethod(self._handle, self._name, self._meta, {**self._options, **options})

    def _mode(self) -> tuple[str, int]:
        return resolve_mode(
            self._options.get("num_returns"), self._meta.is_generator, f"method {self._name}"
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Run the method on the actor; returns what a remote function with the same
        ``num_returns`` returns (a ref, N refs, a generator...)."""
        from ._remote_function import submit_task

        h = self._handle
        mode, n = self._mode()
        name = f"{h._class_name}.{self._name}"
        spec = TaskSpec(  # describes the call's shape; the method itself runs on the worker
            _no_function,
            name,
            mode,
            n,
            Retry(False, 0),
            self._options.get("_generator_backpressure_num_objects"),
        )
        if h._actor_id in _dead:
            return _dead_result(spec, h._actor_id)
        extra = (h._creation,) if h._creation is not None else ()
        call = ActorCall(
            h._actor_id,
            self._name,
            name,
            mode,
            n,
            spec.backpressure,
            h._handle_id,
            h._next_seq(),
            bool(extra),
        )
        out = submit_task(
            call, spec, args, kwargs, resources=None, workers=[h._worker], extra_deps=extra
        )
        _track(h._actor_id, out)
        return out


def _no_function(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("an actor call's client-side spec is never run")


def _dead_result(spec: TaskSpec, actor_id: str) -> Any:
    from ._refs import ObjectRef

    client = get_client()
    err = ActorDiedError(_died_message(actor_id))
    refs = [
        ObjectRef(dx.erred_future(client, f"dead-{new_token()}", err))
        for _ in range(max(spec.num_returns, 1))
    ]
    if spec.mode == "static":
        return refs if spec.num_returns != 1 else refs[0]
    if spec.mode == "plain" and spec.num_returns == 0:
        return None
    if spec.mode == "streaming":
        return iter(refs)  # one ref that raises, then the end, like a stream that failed
    return refs[0]


def _track(actor_id: str, out: Any) -> None:
    """Remember the keys of an unfinished call, so that the actor's death can fail them."""
    from ._generators import ObjectRefGenerator
    from ._refs import ObjectRef

    if isinstance(out, ObjectRefGenerator):
        keys = [out._state.task_key]
    elif isinstance(out, ObjectRef):
        keys = [out.key]
    elif isinstance(out, list):
        keys = [r.key for r in out]
    else:
        return
    client = get_client()
    pending = _pending.setdefault(actor_id, {})
    if len(pending) > 1000:  # forget calls that finished or were dropped
        for key in [k for k in pending if dx.key_status(client, k) in (None, "finished")]:
            del pending[key]
    for key in keys:
        pending[key] = client


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop the actor: its pending and later calls raise ``ActorDiedError``.

    A method already running cannot be interrupted (a Python thread cannot be stopped); its
    result is discarded.
    """
    if not isinstance(actor, ActorHandle):
        raise TypeError(
            f"kill() expects an actor handle, not {type(actor).__name__} (use cancel() for tasks)."
        )
    client = get_client()
    _dead.setdefault(actor._actor_id, "it was killed with kill()")
    try:
        client.run(kill_actor, actor._actor_id, workers=[actor._worker], on_error="ignore")
    except Exception:  # the worker is already gone: the actor is dead either way
        pass
    dx.on_client_loop(client, on_actor_died, actor._actor_id, "it was killed with kill()")


def get_actor(name: str) -> ActorHandle:
    """The handle of the live actor created with ``.options(name=name)``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"get_actor() needs a non-empty str name, not {name!r}")
    handle = _lookup(get_client(), name)
    if handle is None:
        raise ValueError(f"Failed to look up actor with name '{name}'.")
    return handle


def _lookup(client: Client, name: str) -> ActorHandle | None:
    state = client.sync(client.scheduler.daskgen_actor_lookup, name=name)
    if state is None:
        return None
    handle = cloudpickle.loads(state)
    return None if handle._actor_id in _dead else handle


def _register(client: Client, name: str, handle: ActorHandle) -> bool:
    state = cloudpickle.dumps(handle)
    return bool(
        client.sync(
            client.scheduler.daskgen_actor_register, name=name, state=state, actor=handle._actor_id
        )
    )
