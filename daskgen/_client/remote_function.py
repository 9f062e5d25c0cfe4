"""``@remote`` functions (in the caller's process): options, and submission as Dask tasks."""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import warnings
from collections.abc import Callable
from typing import Any

import dask
from distributed import Client, Future

from .. import _dask_internals as dx
from .. import _runtime
from .._job import Job
from .._objects import genstate
from .._objects.generators import ObjectRefGenerator
from .._objects.genstate import GenClaim, GenState, static_refs
from .._objects.promotion import is_unpromoted, promote
from .._objects.refs import ObjectRef, result_ref
from .._options import DEFAULTS, dask_resources, resolve_mode, validate, worker_fits
from .._protocol import (
    FIRE_AND_FORGET_ANNOTATION,
    MAX_RETRIES_ANNOTATION,
    OUT_OF_BAND_ARGS,
    STORED_ARGS,
    Key,
    Packed,
    Stored,
    task_key,
)
from .._worker.interrupt import record_child
from .._worker.run import Retry, TaskSpec
from ..exceptions import ObjectLostError
from . import batching, direct, placement, scheduling, stored_args
from .actors import ActorClass, failed_result
from .arguments import pack_args, snapshot
from .install import ensure_served
from .output import owner_of_new_calls
from .runtime_env import call_job
from .session import worker_resources

_INFINITE_RETRIES = 1_000_000_000
_warned_resources: set[str] = set()


class RemoteFunction:
    """A function that runs as a Dask task: call it with ``.remote(...)``."""

    def __init__(self, function: Callable[..., Any], options: dict[str, Any]) -> None:
        self._function = function
        self._user_options = validate(options)
        opts = {**DEFAULTS, **self._user_options}
        self._options = opts
        is_gen = inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function)
        num_returns = opts["num_returns"]
        mode, n = resolve_mode(num_returns, is_gen, getattr(function, "__qualname__", "it"))
        if opts["_generator_backpressure_num_objects"] not in (None, -1) and mode != "streaming":
            raise ValueError(
                "_generator_backpressure_num_objects applies only to streaming generators "
                f"(num_returns='streaming'), not num_returns={num_returns!r}"
            )
        self._num_returns = n
        name = opts["name"] or getattr(function, "__name__", "task")
        retry = Retry(opts["retry_exceptions"], opts["max_retries"])
        backpressure = opts["_generator_backpressure_num_objects"]
        self._spec = TaskSpec(
            function, name, mode, n, retry, backpressure if backpressure != -1 else None
        )
        self._signature = _signature(function)
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = f"{self._function.__module__}.{self._function.__qualname__}"
        raise TypeError(
            "Remote functions cannot be called directly. Instead of running "
            f"'{name}()', try '{name}.remote()'."
        )

    def options(self, **options: Any) -> RemoteFunction:
        """The same function with some options changed (validated now)."""
        return RemoteFunction(self._function, {**self._user_options, **options})

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function as a Dask task.

        Returns an ``ObjectRef``; a list of N refs for ``num_returns=N``; ``None`` for
        ``num_returns=0``; an ``ObjectRefGenerator`` for a streaming generator; for
        ``num_returns="dynamic"`` a ref whose value is a ``DynamicObjectRefGenerator``.
        """
        if self._signature is not None:
            self._signature.bind(*args, **kwargs)  # Ray's TypeError, here and not in the task
        return submit(self._spec, self._options, args, kwargs)

    def __repr__(self) -> str:
        return f"RemoteFunction({self._spec.name})"


def _signature(function: Any) -> inspect.Signature | None:
    """The signature calls are checked against (None: it has none to check, a builtin)."""
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):
        return None


def _resources(options: dict[str, Any]) -> dict[str, float] | None:
    worker = _runtime.in_worker_task()
    workers = worker_resources() if worker is None else [dx.worker_total_resources(worker)]
    declared = {name for w in workers for name in w}
    wanted = dask_resources(options, dict.fromkeys(declared, 1.0))
    if wanted and worker is None and not _fits(wanted, workers):
        workers = worker_resources(refresh=True)  # workers may have joined since
        if not _fits(wanted, workers):
            key = repr(sorted(wanted.items()))
            if key not in _warned_resources:
                _warned_resources.add(key)
                warnings.warn(
                    f"No worker has {wanted} (the workers declare {workers}): the task will wait "
                    "until a worker that has it joins. Declare resources with "
                    "`dask worker --resources` or init(resources=...).",
                    UserWarning,
                    stacklevel=4,
                )
    return wanted


def _fits(wanted: dict[str, float], workers: list[dict[str, float]]) -> bool:
    return any(worker_fits(wanted, w) for w in workers)


def submit(
    spec: TaskSpec, options: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    retries = 0
    if spec.mode == "plain" and spec.retry.enabled:
        retries = options["max_retries"] if options["max_retries"] >= 0 else _INFINITE_RETRIES
    where = scheduling.for_task(options, spec.name)  # its scheduling_strategy, on Dask
    if where.error is not None:
        return failed_result(spec.mode, spec.num_returns, where.error)
    if where.placement is not None:
        spec = spec.placed(where.placement)
    resources = _resources(options)
    packing = None
    if (
        where.placement is None
        and not where.annotations
        and direct.eligible(spec, resources, options)
    ):
        its_task = functools.partial(_direct_task, spec, resources, options["max_retries"])
        runtime_env = options.get("runtime_env")
        ref, packing = direct.submit(spec, args, kwargs, resources, runtime_env, its_task)
        if ref is not None:
            return ref
    return submit_task(
        spec,
        args,
        kwargs,
        resources=resources,
        retries=retries,
        max_retries=options["max_retries"],
        annotations=where.annotations,
        runtime_env=options.get("runtime_env"),
        packing=packing,
    )


def _direct_task(
    spec: TaskSpec,
    resources: dict[str, float] | None,
    max_retries: int,
    client: Client,
    key: Key,
    packed: bytes | None,
    job: Job,
    worker: str,
) -> None:
    """The Dask task of a direct call (``_client.direct``), under its key (its ref exists),
    with its arguments as pickled for the call, restricted to ``worker``, which runs the call
    (the task takes its value there; it runs elsewhere only if that worker is gone)."""
    args: bytes | Packed | None = packed
    if packed is not None and len(packed) >= OUT_OF_BAND_ARGS:
        args = Packed(packed)
    caller = (client.id, owner_of_new_calls(client), job)
    call = _Call(client, spec, key, (caller, args), resources, 0)
    call.max_retries = max_retries
    call.fire_and_forget = True
    session = _runtime.session
    # The embedded cluster's scheduler shares this process: a sequential caller's tasks go to
    # it together, a few ms apart (~2x the calls a second there); elsewhere each goes at once.
    defer = direct.TASK_DELAY_S if session is not None and session.cluster is not None else 0.0
    with call._annotations(), dask.annotate(workers=[worker], allow_other_workers=True):
        batching.submit(client, key, spec, call.args, resources, 0, defer=defer)


def _submit_ready(group: placement.PlacementGroup, gate: Any) -> Any:
    """``group.ready()``'s task: returns the group, and may run only once it is booked."""
    options = {"num_cpus": 0, "max_retries": -1, "scheduling_strategy": gate}
    return RemoteFunction(placement.the_group, options).remote(group)


placement.submit_ready = _submit_ready


def submit_task(
    spec: TaskSpec,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    resources: dict[str, float] | None,
    retries: int = 0,
    max_retries: int | None = None,
    annotations: dict[str, Any] | None = None,
    runtime_env: dict[str, Any] | None = None,
    packing: tuple[Any, list[ObjectRef], list[ObjectRef]] | None = None,
) -> Any:
    """Submit ``spec(caller, packed_args, *deps)`` as a Dask task and shape what the caller
    gets by ``spec``'s mode: a ref, N refs, None, a dynamic generator's ref or a streaming
    generator. ``packing``: the arguments as ``pack_args(..., out_of_band=True)`` made them
    already (pickling passes a streaming generator on, so it is done once)."""
    client = _runtime.client()
    ensure_served(client)
    job = call_job(client, runtime_env)  # travels with the call: namespace, runtime_env
    if packing is None:
        packing = pack_args(spec.name, args, kwargs, out_of_band=True)
    pickled, deps, lent = packing
    packed: bytes | Packed | Stored | None = pickled
    if type(pickled) is bytes and len(pickled) >= OUT_OF_BAND_ARGS:
        packed = Packed(pickled)  # carried as a frame of its own, not copied into each pickle
    stored = None
    if type(packed) is Packed and packed.nbytes >= STORED_ARGS:
        stored = stored_args.store(client, packed, resources)  # a dependency of the task
    if stored is not None:
        assert type(packed) is Packed
        deps, lent = [*deps, stored], [*lent, stored]
        stored_packed, packed = packed, Stored(len(deps) - 1)
    elif type(packed) is Packed and packed.buffers:
        packed = snapshot(packed)  # the caller's memory, sent later: the call's own copy
    key = task_key(spec.name)
    worker = _runtime.in_worker_task()
    if worker is not None:
        # a task Dask runs, or a direct call (``_worker.direct``, in a thread of daskgen's own)
        parent = dx.worker_current_key(worker) or _runtime.current_call.get()
        if parent is not None:
            record_child(parent, key)  # cancel(parent, recursive=True) cancels it too
    futures = tuple(r._future for r in deps)
    caller = (client.id, owner_of_new_calls(client), job)
    call = _Call(client, spec, key, (caller, packed, *futures), resources, retries)
    call.max_retries = max_retries
    call.placement = annotations or {}
    if stored is not None:
        call.stored = (stored.key, stored_packed)
        call.lent = lent

    state = refs = None
    if spec.mode != "plain":
        # Everything that will claim the task's yields exists before the task can start, so a
        # yield can never arrive to find nobody holding it (it would be released).
        settle_at_end = spec.mode == "static" and spec.retry.enabled
        state = GenState(client, key, spec.mode, spec.backpressure, settle_at_end)
        state.lent = lent
        if spec.mode == "static":
            refs = static_refs(state, spec.num_returns)
    # Ray's rule: a call runs whether or not its ref is kept. A plain call (task or actor
    # method) is Dask's fire-and-forget: the scheduler keeps it until it has run, then frees
    # its result once no ref remains (see _Call._annotations). A generator call is held by its
    # GenState until it ends.
    call.fire_and_forget = spec.mode == "plain"
    if stored is not None:
        # Before submitting: a store that fails at once takes the call out again (_inline).
        _restorable[key] = call
    future = call.submit(deps, lent)
    if state is not None:
        state.attach(future)
    if stored is not None:
        dx.on_future_done(client, future, _restorable.pop, key, None)

    if spec.mode == "plain":
        if lent:
            # The refs inside the arguments stay alive until the task has run, even if the
            # caller drops the call's own ref at once (the task may still read them).
            dx.on_future_done(client, future, _hold, lent)
        if spec.num_returns == 0:
            return None
        return result_ref(future)
    assert state is not None
    if refs is not None:
        return refs[0] if spec.num_returns == 1 else refs
    if spec.mode == "dynamic":
        return ObjectRef(future, owner=GenClaim(state))
    return ObjectRefGenerator(state)


def _when_published(
    state: GenState, index: int, done: Callable[[BaseException | None], None]
) -> None:
    """``done(None)`` once yield ``index`` exists; ``done(why)`` if the task ended without it."""

    def check() -> None:
        done(None if state.is_published(index) else state.failure())

    state.when_published(index, check)


def _hold(*_: Any) -> None:
    """A done-callback whose only job is to keep its arguments alive until then."""


# Calls whose arguments are stored (``_client.stored_args``) and whose task has not ended: if
# the worker holding the arguments dies first, Dask forgets the task too, and it is submitted
# again with its arguments stored anew (their bytes are the caller's, see ``_Call.restore``),
# as often as its max_retries allows.
_restorable: dict[Key, _Call] = {}


def _restore_lost(key: Key) -> bool:
    """``genstate``'s hook for a key Dask forgot with a dead worker (on the client's loop).

    Each time counts against the call's ``max_retries``, as a worker's death does on Ray:
    the task may have been running on the worker that held its arguments (Dask runs it there).
    """
    call = _restorable.get(key)
    if call is None or call.stored is None:
        return False
    allowed = call.max_retries if call.max_retries is not None else 0
    if 0 <= allowed <= call.restores:
        del _restorable[key]
        error = ObjectLostError(
            f"The arguments of {key!r} were lost with the worker holding them (it died) "
            f"before the task finished, and max_retries={allowed} allows no further attempt."
        )
        dx.key_set_error(call.client, key, error, even_if_done=True)
        return True
    call.restores += 1
    threading.Thread(target=call.restore, name="daskgen-restore", daemon=True).start()
    return True


genstate.restore_lost = _restore_lost


class _Call:
    """One submission, made now or once the static-generator refs it depends on exist."""

    def __init__(
        self,
        client: Client,
        fn: Callable[..., Any],
        key: str,
        args: tuple[Any, ...],
        resources: dict[str, float] | None,
        retries: int,
    ) -> None:
        self.client = client
        self.fn = fn
        self.key = key
        self.args = args
        self.resources = resources
        self.retries = retries
        self.max_retries: int | None = None  # re-runs allowed after the worker dies
        # Dask annotations saying where it may run (``_client.scheduling``)
        self.placement: dict[str, Any] = {}
        self.fire_and_forget = False  # keep the task running even if every ref is dropped
        # The key of the call's stored arguments (the last dependency) and their bytes: if
        # the worker cannot take them, they go packed into the task instead.
        self.stored: tuple[Key, Packed] | None = None
        self.lent: list[ObjectRef] = []  # what the call keeps alive until its task ends
        self.restores = 0
        self._remaining = 0
        self._failure: BaseException | None = None
        self._lock = threading.Lock()

    def submit(self, deps: list[ObjectRef], lent: list[ObjectRef]) -> Future:
        """Submit now and return the task's future, or return a future for it and submit
        once the keys it needs exist.

        Beyond Ray: a task that takes yield i of a running ``num_returns=N`` generator starts as
        soon as yield i exists. Dask cannot depend on a key that does not exist yet, so such a
        submission waits (on the client's loop) for the yield instead of for the generator.
        The same holds for the result of a direct actor call passed on (``lent``): it becomes a
        real key first (``_objects.promotion.promote``).
        """
        waits: list[Callable[[Callable[[BaseException | None], None]], None]] = []
        for ref in deps:
            state = getattr(ref._owner, "state", None)
            index = int(ref.key[1]) if isinstance(ref.key, tuple) else -1
            if isinstance(state, GenState) and state.mode == "static":
                if not state.is_published(index):
                    waits.append(functools.partial(_when_published, state, index))
        for key in {r.key for r in lent if is_unpromoted(r.key)}:
            if self.stored is not None and key == self.stored[0]:
                waits.append(self._when_stored)
            else:
                waits.append(functools.partial(dx.on_client_loop, self.client, promote, key))
        if not waits:
            with self._annotations():
                if self.client.asynchronous:
                    future = self.client.submit(
                        self.fn,
                        *self.args,
                        key=self.key,
                        pure=False,
                        resources=self.resources,
                        retries=self.retries,
                    )
                    return dx.lighten(future)
                # several calls in a row: one message to the scheduler (see _client.batching)
                return batching.submit(
                    self.client, self.key, self.fn, self.args, self.resources, self.retries
                )
        future = dx.light_future(self.key, self.client)
        self._remaining = len(waits)
        for wait in waits:
            wait(self._one_ready)
        return future

    def _when_stored(self, done: Callable[[BaseException | None], None]) -> None:
        """``done`` once the call's stored arguments are a key the scheduler knows; if the
        worker could not take them (it left, its connection failed), the call takes them
        packed into the task instead (``_client.stored_args``)."""
        assert self.stored is not None
        key, packed = self.stored

        def finished(error: BaseException | None) -> None:
            if error is not None:
                self._inline()
            done(None)

        dx.on_client_loop(self.client, promote, key, finished)

    def _inline(self) -> None:
        """The stored arguments go packed into the task instead (a copy of the caller's)."""
        assert self.stored is not None
        caller, _, *futures = self.args
        self.args = (caller, snapshot(self.stored[1]), *futures[:-1])
        self.stored = None
        _restorable.pop(self.key, None)

    def restore(self) -> None:
        """The worker holding the call's stored arguments died before the task ran, and Dask
        forgot both: store them again and submit the task anew, under its key (in a thread
        of its own: storing may wait for the scheduler and the wire).

        The bytes stored again are the caller's buffers as they are now: a caller that
        changed an array after the call and before a worker died gives the task the changed
        one (documented in ``_client.stored_args``)."""
        assert self.stored is not None
        ref = stored_args.store(self.client, self.stored[1], self.resources)
        with self._lock:
            self._remaining = 1
            self._failure = None
        if ref is None:
            self._inline()
            self._one_ready(None)
            return
        self.lent.append(ref)
        caller, packed, *futures = self.args
        self.args = (caller, packed, *futures[:-1], ref._future)
        self.stored = (ref.key, self.stored[1])
        self._when_stored(self._one_ready)

    def _one_ready(self, failure: BaseException | None) -> None:
        with self._lock:  # called from this thread or the client's loop
            self._failure = self._failure or failure
            self._remaining -= 1
            if self._remaining:
                return
        if self._failure is not None:
            dx.on_client_loop(self.client, dx.key_set_error, self.client, self.key, self._failure)
            return
        with self._annotations():
            if self.client.asynchronous:
                dx.submit_prebound(
                    self.client, self.key, self.fn, self.args, self.resources, self.retries
                )
            else:  # the calls whose keys exist now go together (200 stored: 1.3 -> X s)
                batching.submit(
                    self.client, self.key, self.fn, self.args, self.resources, self.retries
                )

    def _annotations(self) -> Any:
        """What the scheduler extension reads off the task: Ray's max_retries for worker
        deaths, and whether the task runs even if every ref to it is dropped.

        The latter is Dask's fire-and-forget, applied by the extension as the graph arrives:
        ``distributed.fire_and_forget`` is a second message, which can reach the scheduler
        after a quick task has finished, and then holds its result for ever.
        """
        annotations: dict[str, Any] = dict(self.placement)
        if self.max_retries is not None:
            annotations[MAX_RETRIES_ANNOTATION] = self.max_retries
        if self.fire_and_forget:
            annotations[FIRE_AND_FORGET_ANNOTATION] = True
        return dask.annotate(**annotations) if annotations else contextlib.nullcontext()


def remote(*args: Any, **options: Any) -> Any:
    """``@remote`` or ``@remote(**options)`` on a function (or, for actors, a class)."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make(args[0], {})
    if args:
        raise TypeError(
            "The @remote decorator must be applied either with no arguments and no parentheses, "
            "for example '@remote', or it must be applied using some of the arguments in the "
            "list ['num_returns', 'num_cpus', 'num_gpus', 'resources', 'max_retries', ...], "
            "for example '@remote(num_returns=2, resources={\"CustomResource\": 1})'."
        )
    # Checked once the target is known (functions and classes take different options).
    return lambda target: _make(target, options)


def _make(target: Any, options: dict[str, Any]) -> Any:
    if inspect.isclass(target):
        return ActorClass(target, options)
    if not callable(target):
        raise TypeError(f"@remote needs a function or a class, not {type(target).__name__}")
    return RemoteFunction(target, options)
