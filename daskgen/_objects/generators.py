"""The generators a caller gets: ``ObjectRefGenerator`` (streaming) and
``DynamicObjectRefGenerator``, both reading the caller's ``genstate.GenState`` of their task."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .. import _dask_internals as dx
from .._options import check_timeout
from .._protocol import GenOutcome, key_name
from .._waiting import blocking, wakes
from ..exceptions import GetTimeoutError, RayTaskError, TaskCancelledError
from .genstate import GenClaim, GenState, _registry
from .refs import ObjectRef, bind_ref


class ObjectRefGenerator:
    """The streaming generator a generator task returns: ``next()`` gives each yield's ref.

    Refs come in yield order as soon as each yield is stored in the cluster. After the last one,
    ``StopIteration`` (again on every later call). An exception in the generator after k yields
    gives k refs, then one ref that raises it. Dropping the generator releases every ref it has
    not handed out; the task runs on to its end, as in Ray, and what it yields meanwhile is
    freed as it comes (a paused producer is let go). ``cancel(gen)`` stops it.

    Beyond Ray, it can be passed to another task or actor as an argument of ``.remote()``
    (``handoff``): the stream moves there, from the next ref not taken here, and this object
    can no longer be iterated.
    """

    def __init__(self, state: GenState, claim: GenClaim | None = None, index: int = 0) -> None:
        self._state = state
        # Dropping the generator abandons the call's yields (a generator made for a consumer in
        # the process that passed it shares the claim of the one passed).
        self._claim = claim if claim is not None else GenClaim(state)
        self._index = index
        self._ended = False
        self._passed = False  # passed to another task or actor, which consumes it now

    # -- iteration ------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[ObjectRef]:
        return self

    def __next__(self) -> ObjectRef:
        return self._next_sync(None)

    def _next_sync(self, timeout_s: float | None = None) -> ObjectRef:
        """The next ref, waiting up to ``timeout_s`` seconds (None: forever)."""
        timeout_s = check_timeout(timeout_s, "timeout_s")
        self._check_here()
        st = self._state
        with st.cond:
            ready = self._is_ready()
        if not ready:
            with blocking(), wakes(st.wake), st.cond:
                if not st.cond.wait_for(self._is_ready, timeout=timeout_s):
                    raise GetTimeoutError(f"No new ref within {timeout_s} s.")
        return self._advance()

    def _advance(self) -> ObjectRef:
        st = self._state
        if self._ended:
            raise StopIteration
        if st.cancelled:
            # As in Ray: after cancel(), yields not taken yet are skipped; one ref raises.
            self._ended = True
            return _error_ref(st, cancelled_error(st.task_key))
        index = self._index
        if st.is_published(index):
            ref = st.take(index)
            self._index += 1
            return ref
        # The task ended and published nothing at this index.
        self._ended = True
        failure = st.failure()
        if failure is not None:
            return _error_ref(st, failure)
        raise StopIteration

    def __aiter__(self) -> AsyncIterator[ObjectRef]:
        return self

    async def __anext__(self) -> ObjectRef:
        self._check_here()
        try:
            if not self._is_ready():
                await asyncio.wrap_future(self._state.ready_future(self._index))
            return self._advance()
        except StopIteration:
            raise StopAsyncIteration from None

    # -- Ray's extra methods ----------------------------------------------------------------------

    def completed(self) -> ObjectRef:
        """A ref that resolves (to None) when the task ends; raises only if the task failed as a
        whole (cancelled, worker died)."""
        return ObjectRef(self._state.task)

    def next_ready(self) -> bool:
        """True when ``next()`` would return a ref at once: the next yield's, or the one that
        raises why the stream ended early (after ``cancel()``, or a failed task)."""
        self._check_here()
        st = self._state
        if self._ended:
            return False
        if st.cancelled or self._index in st.published:
            return True
        return st.done and st.failure() is not None

    def is_finished(self) -> bool:
        """True when the task has ended and every ref has been taken (after ``cancel()`` or a
        failed task, the ref that raises why included)."""
        self._check_here()
        st = self._state
        if self._ended:
            return True
        if st.cancelled or not st.done or self._index in st.published:
            return False
        return st.failure() is None

    def _is_ready(self) -> bool:
        st = self._state
        # Passed on: "ready", so that wait() returns it and next() says why it cannot go on.
        return self._ended or self._passed or st.cancelled or self._index in st.published or st.done

    def _check_here(self) -> None:
        """Raise if this generator was passed to another task or actor (it consumes it now)."""
        if self._passed:
            raise RuntimeError(
                f"This ObjectRefGenerator (of {self._state.task_key}) was passed to another "
                "task or actor, which consumes its stream now: it cannot be iterated here any "
                "more. Take the refs you need here before passing it, or iterate it where you "
                "passed it."
            )

    async def _wait_ready(self) -> None:
        await asyncio.wrap_future(self._state.ready_future(self._index))

    def send(self, value: Any) -> None:
        """Not supported, as in Ray: raises ``NotImplementedError``."""
        raise NotImplementedError("ObjectRefGenerator does not support send().")

    def throw(self, *args: Any) -> None:
        """Not supported, as in Ray: raises ``NotImplementedError``."""
        raise NotImplementedError("ObjectRefGenerator does not support throw().")

    def close(self) -> None:
        """Not supported, as in Ray: raises ``NotImplementedError`` (use ``cancel(gen)``)."""
        raise NotImplementedError("ObjectRefGenerator does not support close().")

    async def asend(self, value: Any) -> None:
        raise NotImplementedError("ObjectRefGenerator does not support asend().")

    async def athrow(self, *args: Any) -> None:
        raise NotImplementedError("ObjectRefGenerator does not support athrow().")

    async def aclose(self) -> None:
        raise NotImplementedError("ObjectRefGenerator does not support aclose().")

    def task_key(self) -> str:
        """The Dask key of the generator's task."""
        return self._state.task_key

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._state.task_key}, next={self._index})"

    def __reduce__(self) -> Any:
        """Passed as an argument of ``.remote()``: its stream moves to the call (``handoff``,
        which sets :data:`reduce_for_call`); pickled any other way: ``TypeError``."""
        return reduce_for_call(self)


def _not_passable(gen: ObjectRefGenerator) -> Any:
    raise TypeError(
        "A streaming ObjectRefGenerator can only be passed as an argument of a remote call "
        "(f.remote(gen), actor.method.remote(gen), Cls.remote(gen)), where its stream moves to "
        "the call; it cannot be pickled otherwise (put, a return value). Pass its refs, or use "
        "num_returns='dynamic' for a generator object that can travel anywhere."
    )


# How a generator pickles: ``handoff`` (which builds on this module) sets its own on import.
reduce_for_call: Callable[[ObjectRefGenerator], Any] = _not_passable


def cancelled_error(task_key: str) -> RayTaskError:
    """What the ref after a cancelled stream raises: Ray's ``RayTaskError(TaskCancelledError)``."""
    return RayTaskError.from_exception(TaskCancelledError(task_key), key_name(task_key))


def _error_ref(state: GenState, failure: BaseException) -> ObjectRef:
    """A ref that raises ``failure`` (known here only: the key never reaches the cluster)."""
    return ObjectRef(dx.erred_future(state.client, f"{state.task_key}-error", failure))


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` call: the refs of every yield, in order.

    Iterable once, like Ray's: iterating takes refs off the front, and ``len()`` counts the refs
    not taken yet. It can be passed to other tasks. When the generator raised after k yields,
    the last of the ``k + 1`` refs raises that error.
    """

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = collections.deque(refs)

    def __iter__(self) -> Iterator[ObjectRef]:
        return self

    def __next__(self) -> ObjectRef:
        if not self._refs:
            raise StopIteration
        return self._refs.popleft()

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"

    def __reduce__(self) -> Any:
        return DynamicObjectRefGenerator, (list(self._refs),)


def outcome_value(outcome: GenOutcome) -> Any:
    """What ``get`` of a generator task's own ref returns."""
    if outcome.mode == "dynamic":
        state = _registry.get(outcome.task)  # present in the caller's process
        if state is not None:
            return DynamicObjectRefGenerator(
                [state.ref(i, k) for i, k in enumerate(outcome.keys())]
            )
        return DynamicObjectRefGenerator([bind_ref(k) for k in outcome.keys()])
    return None
