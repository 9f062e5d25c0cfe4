"""What a collection is built from (in the caller's process): the refs a source names, once each
one's value exists in the cluster, and metadata read from those values where they are.

Sources, and how each is read:

* a list (or any iterable) of ``ObjectRef``: refs of yields (``num_returns=N``, or taken from
  generators), task results, ``put`` values, actor results, in any mix;
* a ``DynamicObjectRefGenerator``, or the ``ObjectRef`` of a ``num_returns="dynamic"`` call
  (its value is waited for): its refs, read without taking them (it can still be iterated);
* a streaming ``ObjectRefGenerator``: its refs, taken with ``next()`` until it ends. A Dask
  collection has a fixed number of partitions, so this waits for the generator's task to end
  (``timeout`` bounds the wait; ``timeout=0`` takes a finished generator only).

Every ref is waited for until its value (or its error) exists, so that the collection's graph
only names keys that are in the cluster (a graph naming a yield not published yet would fail in
the scheduler). A ref that failed in a way only this process knows (a stream cut short by
``cancel``, a task whose worker died) becomes its error, stored in the graph (``ErrorValue``):
computing that partition raises it.
"""

from __future__ import annotations

import pickle
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from distributed import Client, Future

from .. import _dask_internals as dx
from .. import _runtime
from .._client.api import get
from .._objects import promotion
from .._objects.generators import DynamicObjectRefGenerator, ObjectRefGenerator
from .._objects.refs import ObjectRef
from .._objects.resolve import wait_ready
from .._options import check_timeout
from .._protocol import ErrorValue, key_name, new_token, task_of_yield
from ..exceptions import GetTimeoutError, TaskCancelledError, fresh, translate
from ._parts import value_of

# Refs a call took from a streaming generator before its timeout: the next call on the same
# generator starts with them, so that a timeout loses nothing.
_taken: weakref.WeakKeyDictionary[ObjectRefGenerator, list[ObjectRef]] = weakref.WeakKeyDictionary()


class Deadline:
    """One bound on every wait of a call (``timeout`` seconds; None: none)."""

    def __init__(self, timeout: Any) -> None:
        self.timeout = check_timeout(timeout)
        self._end = None if self.timeout is None else time.monotonic() + self.timeout

    def left(self) -> float | None:
        return None if self._end is None else max(0.0, self._end - time.monotonic())


@dataclass
class Source:
    """The refs a source names, all ready, and what each partition reads: the ref's future
    (its key in the cluster), or its error when only this process knows it."""

    client: Client
    refs: list[ObjectRef]
    items: list[Future | ErrorValue]
    label: str  # the first ref's function name: collections' keys show where they came from

    def args(self) -> list[Any]:
        """What each partition's task takes: a reference to the ref's key, not its future
        (``dx.key_ref`` says why), or the ref's error."""
        return [dx.key_ref(i.key) if isinstance(i, Future) else i for i in self.items]

    def futures(self) -> dict[Any, Future]:
        """The refs' futures by key: what a collection holds to keep the values alive."""
        return {i.key: i for i in self.items if isinstance(i, Future)}


def read_source(source: Any, what: str, deadline: Deadline) -> Source:
    """The ready refs of ``source`` (see the module's docstring); ``what`` names the caller in
    errors. Raises ``TypeError``/``ValueError`` for what is not a source, ``GetTimeoutError``
    past the deadline."""
    client = _runtime.client()
    refs = _refs_of(source, what, deadline)
    if not refs:
        raise ValueError(f"{what}: source has no refs, and a Dask collection needs a partition.")
    _wait_ready(client, refs, what, deadline)
    for ref in refs:
        # A direct actor call's result: made a real key of the cluster first.
        promotion.promote_now(ref.key, client)
    return Source(client, refs, [_item(ref) for ref in refs], _label(refs[0]))


def _label(ref: ObjectRef) -> str:
    """The name of the function behind ``ref`` (``split`` for a yield of ``split``): never
    ``-yield-``, which would make the collection's keys look like yields to daskgen."""
    task = task_of_yield(ref.key)
    return key_name(task) if task is not None else ref.task_name().replace("-yield-", "-")


def _refs_of(source: Any, what: str, deadline: Deadline) -> list[ObjectRef]:
    if isinstance(source, ObjectRefGenerator):
        return _stream_refs(source, what, deadline)
    if isinstance(source, DynamicObjectRefGenerator):
        return list(source._refs)
    if isinstance(source, ObjectRef):
        value = get(source, timeout=deadline.left())
        if not isinstance(value, DynamicObjectRefGenerator):
            raise TypeError(
                f"{what}: source is a ref to a {type(value).__name__}; a single ref must be "
                "that of a num_returns='dynamic' call. Pass a list of refs, or a generator."
            )
        return list(value._refs)
    if isinstance(source, (str, bytes, Mapping)) or not isinstance(source, Iterable):
        raise TypeError(
            f"{what}: source must be a list of ObjectRefs, a DynamicObjectRefGenerator (or its "
            f"ref) or an ObjectRefGenerator, not a {type(source).__name__}."
        )
    refs = list(source)
    for i, ref in enumerate(refs):
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"{what}: source[{i}] is a {type(ref).__name__}, not an ObjectRef.")
    return refs


def _stream_refs(gen: ObjectRefGenerator, what: str, deadline: Deadline) -> list[ObjectRef]:
    """Every ref ``gen`` has left, taken with ``next()`` as they come (a generator paused by
    backpressure goes on only when its refs are taken), once its task has ended."""
    if deadline.timeout == 0 and not gen._state.done:
        raise GetTimeoutError(
            f"{what}: the streaming generator {gen.task_key()} has not finished (timeout=0 "
            "takes a finished generator only)."
        )
    taken = _taken.setdefault(gen, [])
    while True:
        try:
            taken.append(gen._next_sync(deadline.left()))
        except StopIteration:
            break
        except GetTimeoutError:
            raise GetTimeoutError(
                f"{what}: the streaming generator {gen.task_key()} did not finish within "
                f"{deadline.timeout} s. Call {what} on it again to go on: the refs this call "
                "took are kept for that call."
            ) from None
    del _taken[gen]
    return taken


def _wait_ready(client: Client, refs: list[ObjectRef], what: str, deadline: Deadline) -> None:
    pending = [ref for ref in dict.fromkeys(refs) if not ref._is_ready()]
    if pending and deadline.timeout != 0:
        wait_ready(client, pending, len(pending), deadline.left())
    left = sum(not ref._is_ready() for ref in pending)
    if left:
        raise GetTimeoutError(
            f"{what}: {left} of the {len(refs)} refs were not ready within {deadline.timeout} s."
        )


def _item(ref: ObjectRef) -> Future | ErrorValue:
    future = ref._future
    if future.status in ("error", "cancelled"):
        error = translate(dx.future_exception(future) or TaskCancelledError())
        return ErrorValue(fresh(error))
    return future


# -------------------------------------------------------------------------------------- metadata


def read_metadata(
    source: Source,
    indices: list[int],
    fn: Callable[..., list[Any]],
    what: str,
    deadline: Deadline,
) -> list[Any]:
    """``fn(indices, *values)`` for the values of ``source`` at ``indices``: run here on a value
    that came inline with its ref, else as a small task on the worker holding the values (one
    task per worker, so that no value moves: only ``fn``'s small result does). An error stored
    in a value raises here."""
    out: dict[int, Any] = {}
    remote: list[int] = []
    for i in indices:
        item = source.items[i]
        if type(item) is ErrorValue:
            value_of(item)  # raises the ref's error
        stored = _inline(source.refs[i])
        if stored is not None:
            out[i] = fn([i], stored[0])[0]
        else:
            remote.append(i)
    if remote:
        futures = [source.items[i] for i in remote]
        holders = source.client.who_has(futures)
        groups: dict[str | None, list[int]] = {}
        for i, future in zip(remote, futures, strict=True):
            held_by = sorted(holders.get(future.key) or [None])  # type: ignore[union-attr]
            groups.setdefault(held_by[0], []).append(i)
        args = source.args()
        tasks = [
            source.client.submit(
                fn,
                group,
                *[args[i] for i in group],
                key=f"{source.label}-{what.replace('_', '-')}-meta-{new_token()}",
                workers=[worker] if worker is not None else None,
                allow_other_workers=True,
                pure=False,
            )
            for worker, group in groups.items()
        ]
        for group, task in zip(groups.values(), tasks, strict=True):
            out.update(zip(group, _result(task, what, deadline), strict=True))
    return [out[i] for i in indices]


def _inline(ref: ObjectRef) -> tuple[Any] | None:
    """What the ref's key stores, when it came inline with the ref (no round trip)."""
    blob = ref._inline_blob()
    if blob is None or ref._future.status == "lost":
        return None
    return (pickle.loads(blob),)


def _result(task: Future, what: str, deadline: Deadline) -> Any:
    try:
        return task.result(timeout=deadline.left())
    except Exception as exc:
        if not task.done():
            raise GetTimeoutError(
                f"{what}: reading the values' metadata took longer than {deadline.timeout} s."
            ) from None
        raise fresh(translate(exc)) from None
