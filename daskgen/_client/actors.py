"""Actors: ``@remote`` classes whose instance lives in one worker and runs method calls in order.

How an actor runs on Dask
-------------------------
Dask's own actors are not used: all actors of a worker share one thread there (a long method of
one blocks every other), and an ``ActorFuture`` cannot be a task dependency (dask/distributed
#4488). Instead:

* ``Cls.remote()`` picks a worker that has the requested resources (fewest daskgen actors first)
  and runs a creation task pinned to it. The instance then lives in that worker process, in a
  ``_worker.actor_host.ActorHost`` with its own executor: ``max_concurrency`` threads (1 by
  default), or, for a class with ``async def`` methods, its own event loop.
* ``handle.method.remote()`` sends the call straight to that worker (``actor_channel``: one
  connection per caller process and worker, over Dask's comm layer) instead of submitting a
  task; the worker starts each actor's calls in arrival order. The ref it returns is an
  ordinary ``ObjectRef`` on the call's key, which becomes a real cluster key when it must.
* The scheduler extension records where each actor lives. When that worker leaves, or the actor
  is killed, every client is told, and pending and later calls raise ``ActorDiedError``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import pickle
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import dask
from distributed import Client, Future

from .. import _dask_internals as dx
from .. import _runtime
from .._job import check_namespace
from .._objects import handoff
from .._objects.generators import ObjectRefGenerator
from .._objects.genstate import GenClaim, GenState, static_refs
from .._objects.promotion import is_unpromoted, owner_of, promote
from .._objects.refs import InlineValue, ObjectRef, result_ref
from .._objects.resolve import failed_future
from .._options import (
    DEFAULTS,
    METHOD_CALL_OPTIONS,
    METHOD_DECORATOR_OPTIONS,
    check_max_concurrency,
    dask_resources,
    resolve_mode,
    validate,
    validate_method,
    worker_fits,
)
from .._protocol import (
    ACTOR_ANNOTATION,
    EXPECT_OP,
    FIRE_AND_FORGET_ANNOTATION,
    OUTCOME_INDEX,
    VERSION,
    WORKERS_OP,
    ErrorValue,
    Key,
    code_file,
    new_token,
    task_key,
)
from .._worker.actor_host import DEFAULT_GROUP, create_actor, died_message, kill_actor
from ..exceptions import (
    ActorAlreadyExistsError,
    ActorDiedError,
    PendingCallsLimitExceeded,
    RaySystemError,
    TaskCancelledError,
    fresh,
    translate,
)
from . import placement, scheduling
from .actor_channel import (
    GONE_FOR_S,
    _channels,
    channel,
    closed_under_us,
    fail_parked,
    moved,
    resend_parked,
    restartable,
    retries,
    unavailable,
)
from .arguments import pack_args
from .install import ensure_served
from .output import owner_of_new_calls
from .runtime_env import call_job

_METHOD_OPTIONS = "__daskgen_method_options__"
logger = logging.getLogger("daskgen")


def method(*args: Any, **options: Any) -> Any:
    """``@method(num_returns=...)`` on an actor method, as Ray's ``@ray.method``."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        validate_method(options, METHOD_DECORATOR_OPTIONS)
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
    # What calls are checked against, in the process that has the class (a handle that came
    # from elsewhere leaves the check to the actor's worker): the function's signature, and
    # whether its first parameter is the instance.
    signature: inspect.Signature | None = field(default=None, compare=False)
    with_self: bool = field(default=True, compare=False)

    def check(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Ray's ``TypeError`` at ``.remote()`` for arguments the method cannot take."""
        if self.signature is not None:
            self.signature.bind(*((None, *args) if self.with_self else args), **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return _MethodMeta, (self.is_generator, self.is_async, self.options)


def _methods_of(cls: type, backpressure: int | None = None) -> dict[str, _MethodMeta]:
    """Each method's kind and options; ``backpressure`` (the class's
    ``_actor_generator_backpressure_num_objects``) is the default of its generator methods."""
    out = {}
    for name, fn in inspect.getmembers(cls, predicate=callable):
        if name.startswith("__") and name != "__call__":
            continue
        is_generator = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
        options = dict(getattr(fn, _METHOD_OPTIONS, {}))
        if is_generator and backpressure not in (None, -1):
            options.setdefault("_generator_backpressure_num_objects", backpressure)
        try:
            signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None
        static = inspect.getattr_static(cls, name, None)
        out[name] = _MethodMeta(
            is_generator=is_generator,
            is_async=inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn),
            options=options,
            signature=signature,
            with_self=inspect.isfunction(static),  # not a static or class method
        )
    return out


def _check_group(group: str | None, groups: dict[str, int] | list[str], method: str) -> None:
    """A method's ``concurrency_group`` must be one of its class's ``concurrency_groups``."""
    if group is not None and group not in groups:
        raise ValueError(
            f"The concurrency group {group!r} of method {method!r} is not defined: the class "
            f"defines {sorted(groups) or 'none'} (concurrency_groups={{name: max_concurrency}})."
        )


# ------------------------------------------------------------------------------- client side


class ActorClass:
    """A class decorated with ``@remote``: create actors with ``.remote(...)``."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = validate(options, kind="actors")
        self._methods = _methods_of(
            cls, self._options.get("_actor_generator_backpressure_num_objects")
        )
        self._is_async = any(m.is_async for m in self._methods.values())
        check_max_concurrency(self._options.get("max_concurrency"))
        groups = self._options.get("concurrency_groups") or {}
        for method_name, meta in self._methods.items():
            _check_group(meta.options.get("concurrency_group"), groups, method_name)
        self.__name__ = cls.__name__
        self.__doc__ = cls.__doc__
        try:
            self._signature: inspect.Signature | None = inspect.signature(cls)
        except (TypeError, ValueError):
            self._signature = None

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
        if self._signature is not None:
            self._signature.bind(*args, **kwargs)  # Ray's TypeError, here
        opts = self._options
        name = opts.get("name")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, not {name!r}")
        client = _runtime.client()
        ensure_served(client)
        # Its creator's namespace and runtime_env: the actor's calls and lookups are in that
        # namespace, even when its name is registered in another (``namespace=``), as Ray's.
        job = call_job(client, opts.get("runtime_env"))
        namespace = opts.get("namespace") or job.namespace
        if name is not None:
            existing = _lookup(client, namespace, name)
            if existing is not None:
                if opts.get("get_if_exists"):
                    return existing
                raise _name_taken(name, opts.get("namespace"))
            anonymous = opts.get("namespace") is None and namespace == _anonymous_namespace()
            if opts.get("lifetime") == "detached" and anonymous:
                logger.warning(
                    "It looks like you're creating a detached actor in an anonymous namespace. "
                    "In order to access this actor in the future, you will need to explicitly "
                    'connect to this namespace with init(namespace="%s", ...)',
                    namespace,
                )
        where = scheduling.for_actor(opts, self._cls.__name__)  # its scheduling_strategy
        found = _workers(client)
        declared = {name for res in found["able"].values() for name in res}
        resources = dask_resources({**DEFAULTS, **opts}, dict.fromkeys(declared, 1.0))
        worker = _choose_worker(found, resources or {}, where.workers)
        actor_id = new_token()
        max_concurrency = opts.get("max_concurrency") or (1000 if self._is_async else 1)
        groups = dict(opts.get("concurrency_groups") or {})
        config = {
            "groups": sorted(groups),
            "max_pending_calls": opts.get("max_pending_calls"),
            "max_restarts": opts.get("max_restarts") or 0,
            "max_task_retries": opts.get("max_task_retries") or 0,
        }
        handle = ActorHandle(
            actor_id, self._cls.__name__, self._methods, worker, self._is_async, config
        )
        packed, deps, lent = pack_args(f"{self._cls.__name__}.remote", args, kwargs)
        # Fire-and-forget, as calls are: created even if the handle is dropped at once. The
        # creation key lives as long as a handle does, anywhere (each handle holds a ref to
        # it): once Dask forgets it, daskgen's scheduler plugin has the actor ended.
        lifetime = {
            "actor": actor_id,
            "detached": opts.get("lifetime") == "detached",
            "max_restarts": opts.get("max_restarts") or 0,
        }
        annotations = {FIRE_AND_FORGET_ANNOTATION: True, ACTOR_ANNOTATION: lifetime}
        with dask.annotate(**annotations, **where.annotations):
            creation = client.submit(
                create_actor,
                actor_id,
                cloudpickle.dumps((self._cls, code_file(self._cls))),
                {DEFAULT_GROUP: max_concurrency, **groups},
                self._is_async,
                job,
                packed,
                *(r._future for r in deps),
                key=f"{self._cls.__name__}-{actor_id}",
                workers=[worker],
                allow_other_workers=False,
                resources=resources,
                pure=False,
            )
        handle._creation = creation
        handle._ref = ObjectRef(creation)
        if lent:
            # The refs in the constructor's arguments live until it has run, as Ray keeps a
            # task's arguments (a handle among them would otherwise keep its actor for ever).
            dx.on_future_done(client, creation, lent.clear)
        if name is not None and not _register(client, namespace, name, handle):
            # Another process took the name between the lookup above and now.
            existing = _lookup(client, namespace, name) if opts.get("get_if_exists") else None
            kill(handle)
            if existing is None:
                raise _name_taken(name, opts.get("namespace"))
            return existing
        return handle

    def __repr__(self) -> str:
        return f"ActorClass({self._cls.__name__})"


def _name_taken(name: str, namespace: str | None) -> ActorAlreadyExistsError:
    """Ray's error for a name taken in the namespace (which it names as the option gave it:
    None for the creator's own)."""
    return ActorAlreadyExistsError(
        f"The name {name} (namespace={namespace}) is already taken. Please use a different "
        f"name or get the existing actor using ray.get_actor('{name}', "
        f"namespace='{namespace}')"
    )


def _anonymous_namespace() -> str | None:
    """The driver's namespace if ``init`` was given none (a fresh one no other driver knows)."""
    session = _runtime.session
    if session is None or _runtime.in_worker_task() is not None or session.namespace_given:
        return None
    return session.job.namespace  # type: ignore[no-any-return]


_placed: dict[str, int] = {}  # worker address -> actors this process placed there
# How long creating an actor waits for the cluster to have any worker at all (right after a
# worker died, its nanny restarts it within a few seconds).
NO_WORKER_WAIT_S = 30.0


def _workers(client: Client) -> dict[str, Any]:
    """What daskgen's scheduler plugin says of the workers able to run daskgen (those without
    it left out): their resources, load and actors (see ``able_workers`` there); waits
    (bounded) while there is no worker."""
    found = _not_closed(client.sync(getattr(client.scheduler, WORKERS_OP)))
    deadline = time.monotonic() + NO_WORKER_WAIT_S
    # Right after a worker died none may be left, or its replacement may still be starting or
    # being asked whether it has daskgen: wait (bounded) for one that can host the actor.
    while not found["able"] and (found["probing"] or not found["lacking"]):
        if time.monotonic() > deadline:
            break  # the caller reports that no worker can host the actor
        time.sleep(0.05)
        found = _not_closed(client.sync(getattr(client.scheduler, WORKERS_OP)))
    if not found["able"] and found["lacking"]:
        lacking = ", ".join(f"{w} has {what}" for w, what in sorted(found["lacking"].items()))
        raise RaySystemError(
            f"No worker of the cluster can host an actor: none can run daskgen's tasks "
            f"({lacking}). Run `pip install daskgen=={VERSION}` on those workers and restart "
            "them."
        )
    return found  # type: ignore[no-any-return]


def _not_closed(found: dict[str, Any]) -> dict[str, Any]:
    """``found`` without the workers whose actor connection just closed under this process
    (a worker that died is still listed until the scheduler notices, a moment later)."""
    now = time.monotonic()
    for address, when in list(closed_under_us.items()):
        if address not in found["able"] or now - when > GONE_FOR_S:
            del closed_under_us[address]
    if closed_under_us:
        found["able"] = {a: r for a, r in found["able"].items() if a not in closed_under_us}
    return found


def _choose_worker(
    found: dict[str, Any], resources: dict[str, float], among: list[str] | None = None
) -> str:
    """The worker that has ``resources`` (one of ``among``, its scheduling strategy's, if
    given), with room that no placement group booked if one has, then a thread free for the
    actor's creation, then hosting the fewest actors (placed from here, then in all)."""
    workers: dict[str, dict[str, float]] = found["able"]
    able = [addr for addr, declared in workers.items() if worker_fits(resources, declared)]
    if among is not None:
        able = [addr for addr in able if addr in among]
    if not able:
        raise ValueError(
            f"No worker can host this actor: it needs {resources}, and the workers "
            f"{'of its scheduling strategy ' if among is not None else ''}declare "
            f"{list(workers.values()) or f'nothing (none joined within {NO_WORKER_WAIT_S} s)'}."
        )
    busy, hosted = found.get("busy", {}), found.get("actors", {})
    booked = found.get("booked", {}) if among is None else {}

    def no_room(a: str) -> bool:  # its room is booked by placement groups
        room = {r: v - booked.get(a, {}).get(r, 0.0) for r, v in workers[a].items()}
        return bool(booked.get(a)) and not worker_fits(resources, room)

    choice = min(
        able,
        key=lambda a: (no_room(a), busy.get(a, 0.0) >= 1.0, _placed.get(a, 0), hosted.get(a, 0), a),
    )
    _placed[choice] = _placed.get(choice, 0) + 1
    return choice


_dead: dict[str, str] = {}  # actor id -> why it died (this process's view)


def where(handle: ActorHandle) -> str:
    """The worker hosting the actor now (another than at creation once it was restarted)."""
    return moved.get(handle._actor_id, handle._worker)


def on_actor_died(
    actor: str,
    reason: str,
    moved_to: str | None = None,
    restarts_left: int | None = None,
    **_: Any,
) -> None:
    """The clients' handler for ``daskgen-actor-died`` (on the client's event loop): the
    calls to that actor still waiting for their results fail; with ``moved_to``, the actor is
    being restarted there (``ActorUnavailableError`` for those calls, later calls go there)."""
    if moved_to is not None:
        moved[actor] = moved_to
        if restarts_left == 0:
            restartable.discard(actor)  # the next loss is its death
        error: BaseException = unavailable(actor, reason)
    else:
        _dead.setdefault(actor, reason)
        error = ActorDiedError(died_message(actor, _dead[actor]))
    for ch in list(_channels.values()):
        ch.fail_actor(actor, error)
    if moved_to is not None:
        resend_parked(actor, moved_to)  # max_task_retries: calls in flight run again there
    else:
        fail_parked(actor, error)


class ActorHandle:
    """A handle to an actor: ``handle.method.remote(...)`` calls a method; picklable."""

    def __init__(
        self,
        actor_id: str,
        class_name: str,
        methods: dict[str, _MethodMeta],
        worker: str,
        is_async: bool,
        config: dict[str, Any] | None = None,
        ref: ObjectRef | None = None,
    ) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._worker = worker
        self._is_async = is_async
        # The class's options its callers need: its concurrency groups' names, and the limit
        # of calls this handle may have pending (max_pending_calls).
        self._config = config or {}
        # A ref to the actor's creation key: Dask's reference counting of it, across every
        # process holding a handle, is the actor's lifetime (see ActorClass.remote).
        self._ref = ref
        _count_handle(self, actor_id, worker)
        if self._config.get("max_restarts"):
            restartable.add(actor_id)
        self._creation: Future | None = None

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods", {})
        if name in methods:
            return ActorMethod(self, name, methods[name], {})
        raise AttributeError(f"'{self.__dict__.get('_class_name')}' actor has no method {name!r}")

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id})"

    def __reduce__(self) -> tuple[Any, ...]:
        state = (
            self._actor_id,
            self._class_name,
            self._methods,
            self._worker,
            self._is_async,
            self._config,
            self._ref,
        )
        return _rebuild_handle, state


def _rebuild_handle(*state: Any) -> ActorHandle:
    return ActorHandle(*state)


# Handles alive in this process, per actor: when the last one goes, each connection that
# carried calls to the actor says so after those calls (the host ends the actor once no handle
# is left anywhere and those calls have run).
_live: dict[str, int] = {}
_live_lock = threading.Lock()


def _count_handle(handle: ActorHandle, actor: str, worker: str) -> None:
    with _live_lock:
        _live[actor] = _live.get(actor, 0) + 1
    weakref.finalize(handle, _handle_gone, actor, worker)


def _handle_gone(actor: str, worker: str) -> None:
    with _live_lock:
        left = _live.get(actor, 1) - 1
        if left > 0:
            _live[actor] = left
            return
        _live.pop(actor, None)
    worker = moved.get(actor, worker)  # where it lives now, if it was restarted
    for (_, address), ch in list(_channels.items()):
        if address == worker:
            try:
                ch.send({"op": "drop", "actor": actor})
            except Exception:  # the client is closing: the connection goes with it
                pass


class ActorMethod:
    """``handle.method``: call it with ``.remote(...)``."""

    def __init__(
        self, handle: ActorHandle, name: str, meta: _MethodMeta, options: dict[str, Any]
    ) -> None:
        self._handle = handle
        self._name = name
        self._meta = meta
        self._options = validate_method({**meta.options, **options}, METHOD_CALL_OPTIONS)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "Actor methods cannot be called directly. Instead of running "
            f"'object.{self._name}()', try 'object.{self._name}.remote()'."
        )

    def options(self, **options: Any) -> ActorMethod:
        validate_method(options, METHOD_CALL_OPTIONS)
        groups = self._handle._config.get("groups", [])
        _check_group(options.get("concurrency_group"), groups, self._name)
        return ActorMethod(self._handle, self._name, self._meta, {**self._options, **options})

    def _mode(self) -> tuple[str, int]:
        return resolve_mode(
            self._options.get("num_returns"), self._meta.is_generator, f"method {self._name}"
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Run the method on the actor; returns what a remote function with the same
        ``num_returns`` returns (a ref, N refs, a generator...). The call goes straight to the
        actor's worker (see ``_worker.actor_host``) and runs whether or not its ref is kept."""
        h = self._handle
        self._meta.check(args, kwargs)
        mode, n = self._mode()
        name = f"{h._class_name}.{self._name}"
        backpressure = self._options.get("_generator_backpressure_num_objects")
        if h._actor_id in _dead:
            return _dead_result(mode, n, h._actor_id)
        client = _runtime.client()
        ensure_served(client)  # the channel asks daskgen's scheduler plugin about the worker
        ch = channel(client, where(h))
        limit = h._config.get("max_pending_calls")
        if limit is not None and limit >= 0 and ch.pending_for(h._actor_id) >= limit:
            raise PendingCallsLimitExceeded(
                f"The task {self._name} could not be submitted to {h!r} because more than "
                f"{limit} tasks are queued on the actor. This limit can be adjusted with the "
                "`max_pending_calls` actor option."
            )
        key = task_key(name)
        packed, deps, lent = pack_args(name, args, kwargs)
        msg = {
            "op": "call",
            "actor": h._actor_id,
            "key": key,
            "method": self._name,
            "name": name,
            "packed": packed,
            "deps": [r.key for r in deps],
            "mode": mode,
            "n": n,
            "backpressure": backpressure,
            "owner": owner_of_new_calls(client),
            "group": self._options.get("concurrency_group"),
        }
        waits = _arguments_to_wait_for(client, deps, lent, ch.address)
        msg["wait"] = bool(waits)
        out, on_failed = _call_result(client, key, mode, n, backpressure, lent, ch)
        tries = h._config.get("max_task_retries")
        if tries and h._config.get("max_restarts") and mode == "plain":
            retries[key] = [msg, tries]  # sent again if the actor restarts before it ran
        ch.call(key, msg, on_failed, h._actor_id, h._ref)
        if waits:
            _send_when_ready(ch, key, waits)
        return out


_Wait = Callable[[Callable[[BaseException | None], None]], None]


def _arguments_to_wait_for(
    client: Client, deps: list[Any], lent: list[Any], worker: str
) -> list[_Wait]:
    """What must happen before a call's host may start it, as Ray's caller resolves a task's
    arguments: each top-level argument computed (if it failed, its error becomes the call's),
    and each ref passed on made a real key, but for results the same worker holds (the host
    reads those from its own memory, once computed)."""
    waits: list[_Wait] = []
    for ref in deps:
        if not ref._is_done() or failed_future(ref._future):
            waits.append(functools.partial(_when_computed, client, ref))
    local = {r.key for r in deps if _home(r.key) == worker}
    for key in {r.key for r in lent if is_unpromoted(r.key) and r.key not in local}:
        waits.append(functools.partial(dx.on_client_loop, client, promote, key))
    return waits


def _when_computed(client: Client, ref: Any, done: Callable[[BaseException | None], None]) -> None:
    """``done(None)`` once ``ref`` has its value; ``done(error)`` if its task failed in Dask
    (an error held as a value reaches the method as an argument, and raises there)."""

    def check() -> None:
        if ref._future.status in ("error", "cancelled"):
            done(fresh(translate(dx.future_exception(ref._future) or TaskCancelledError())))
        else:
            done(None)

    if ref._is_done() and ref._future.status != "pending":
        check()
    else:  # a direct task call's value came inline before its key is in the cluster
        dx.on_future_done(client, ref._future, check)


def _home(key: Key) -> str | None:
    """The worker holding the unpromoted result ``key`` (the address of its channel)."""
    return getattr(owner_of(key), "address", None)


def _send_when_ready(ch: Any, key: Key, waits: list[_Wait]) -> None:
    """Tell the host that call ``key`` may start once every wait is over (it holds the call,
    and the calls after it, until then), or that the call fails with the first error."""
    left = [len(waits)]
    failed: list[BaseException] = []
    lock = threading.Lock()

    def one(error: BaseException | None) -> None:
        with lock:
            if error is not None:
                failed.append(error)
            left[0] -= 1
            if left[0]:
                return
        blob = pickle.dumps(ErrorValue(failed[0])) if failed else None
        ch.send({"op": "ready", "key": key, "error": blob})

    for wait in waits:
        wait(one)


def _call_result(
    client: Client,
    key: Key,
    mode: str,
    n: int,
    backpressure: int | None,
    lent: list[Any],
    ch: Any,
) -> tuple[Any, Any]:
    """What the caller gets back for a direct call, shaped as for remote functions, and what
    to do if the call ends without its outcome (a generator call: its actor died...)."""
    future = dx.light_future(key, client)
    if mode == "plain":
        if lent:
            dx.on_future_done(client, future, _hold, lent)
        ref = result_ref(future)
        return (None if n == 0 else ref), None
    state = GenState(client, key, mode, backpressure)
    state.lent = lent
    state.send_consumed = lambda msg: ch.send(
        {"op": "consumed", "key": msg["task"], "index": msg["index"]}
    )
    refs = static_refs(state, n) if mode == "static" else None
    state.attach(future)
    if refs is not None:
        # Its refs exist before their yields: the scheduler must know the call runs, so that a
        # process they reach early waits for them (``on_desire``).
        expect = {"op": EXPECT_OP, "task": key, "worker": ch.address}
        _runtime.send(client, expect)

        def failed(error: BaseException | None) -> None:
            _runtime.send(client, {**expect, "ended": True})
            state.fail(error)

        return (refs[0] if n == 1 else refs), failed
    if mode == "dynamic":
        cell = state.cells[OUTCOME_INDEX] = InlineValue()
        return ObjectRef(future, owner=GenClaim(state), inline=cell), state.fail
    handoff.fixed(state, _FIXED_STREAM)
    return ObjectRefGenerator(state), state.fail


# Why the stream of a direct actor call stays with its caller (see ``_objects.handoff``).
_FIXED_STREAM = (
    "A streaming generator returned by an actor method cannot be passed to another task or "
    "actor: its end, failures and backpressure travel this process's own connection to the "
    "actor, which the other process does not have. Iterate it here and pass the refs, or call "
    "the actor method from the task that consumes the stream."
)


def _hold(*_: Any) -> None:
    """A done-callback whose only job is to keep its arguments alive until then."""


def _dead_result(mode: str, n: int, actor_id: str) -> Any:
    return failed_result(mode, n, ActorDiedError(died_message(actor_id, _dead[actor_id])))


def failed_result(mode: str, n: int, err: BaseException) -> Any:
    """What a call that fails before it runs returns, shaped by its mode: refs that raise
    ``err`` (a stream of one such ref)."""
    client = _runtime.client()
    refs = [
        ObjectRef(dx.erred_future(client, f"dead-{new_token()}", err)) for _ in range(max(n, 1))
    ]
    if mode == "static":
        return refs if n != 1 else refs[0]
    if mode == "plain" and n == 0:
        return None
    if mode == "streaming":
        return iter(refs)  # one ref that raises, then the end, like a stream that failed
    return refs[0]


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop the actor: its pending and later calls raise ``ActorDiedError``.

    A method already running cannot be interrupted (a Python thread cannot be stopped); its
    result is discarded.
    """
    if not isinstance(actor, ActorHandle):
        raise TypeError(
            f"kill() expects an actor handle, not {type(actor).__name__} (use cancel() for tasks)."
        )
    end_actor(_runtime.client(), actor._actor_id, where(actor), "it was killed by `ray.kill`")


def end_actor(client: Client, actor_id: str, worker: str | None, reason: str) -> None:
    """Kill actor ``actor_id`` on ``worker`` (where it lives; None: not known, it is only
    marked dead here): its pending and later calls raise ``ActorDiedError`` saying
    ``reason``."""
    _dead.setdefault(actor_id, reason)
    worker = moved.get(actor_id, worker)
    if worker is not None:
        try:
            client.run(kill_actor, actor_id, reason, workers=[worker], on_error="ignore")
        except Exception:  # the worker is already gone: the actor is dead either way
            pass
    dx.on_client_loop(client, on_actor_died, actor_id, reason)


placement.end_actor = end_actor


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the live actor created with ``.options(name=name)``, in ``namespace``
    (by default the caller's: the driver's ``init(namespace=)``; inside a task or actor, the
    namespace of the driver that made the call)."""
    if not isinstance(name, str):
        raise TypeError(f"get_actor() needs a str name, not {type(name).__name__}")
    if not name:
        raise ValueError("Please supply a non-empty value to get_actor")
    check_namespace(namespace)
    client = _runtime.client()
    handle = _lookup(client, namespace or _runtime.job().namespace, name)
    if handle is None:
        raise ValueError(
            f"Failed to look up actor with name '{name}'. This could because 1. You are trying "
            "to look up a named actor you didn't create. 2. The named actor died. 3. You did "
            "not use a namespace matching the namespace of the actor."
        )
    return handle


def list_named_actors(all_namespaces: bool = False) -> list[str] | list[dict[str, str]]:
    """The names of the live actors created with ``.options(name=...)`` in the caller's
    namespace; with ``all_namespaces``, Ray's ``{"name", "namespace"}`` entries of every
    namespace."""
    client = _runtime.client()
    namespace = None if all_namespaces else _runtime.job().namespace
    found = client.sync(client.scheduler.daskgen_actor_names, namespace=namespace)
    if all_namespaces:
        return [{"name": name, "namespace": ns} for ns, name in found]
    return [name for _, name in found]


def _lookup(client: Client, namespace: str, name: str) -> ActorHandle | None:
    state = client.sync(client.scheduler.daskgen_actor_lookup, namespace=namespace, name=name)
    if state is None:
        return None
    handle = cloudpickle.loads(state)
    return None if handle._actor_id in _dead else handle


def _register(client: Client, namespace: str, name: str, handle: ActorHandle) -> bool:
    state = cloudpickle.dumps(handle)
    return bool(
        client.sync(
            client.scheduler.daskgen_actor_register,
            namespace=namespace,
            name=name,
            state=state,
            actor=handle._actor_id,
        )
    )
