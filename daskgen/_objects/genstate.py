"""What the caller's process knows about each generator task it started, and the client
stream handlers that feed it (``_worker.publish`` documents the protocol; ``generators`` builds the
user-facing generators on this).

One :class:`GenState` per generator call lives in the caller's process. It holds the generator
task's future until the task ends, whatever the caller does (Ray runs a dropped generator to its
end), and receives a ``daskgen-yield`` message per published yield, in order, before the task's
own completion. What the caller got back (refs, generator) holds a :class:`GenClaim`; when the
last of those is gone the state is *abandoned*: yields not handed out, and those still to come,
are released at once.

Who holds each yield key:
* streaming and dynamic: the state wraps every published key in a ``Future`` at once, so the key
  is owned from the moment it exists; ``next()`` hands that future over to the ``ObjectRef`` it
  returns. Dropping the generator drops every future never handed out.
* static ``num_returns=N``: the caller's N refs were made before the task was submitted; a
  published key none of them holds any more is released at once.
"""

from __future__ import annotations

import concurrent.futures
import pickle
import threading
import weakref
from collections.abc import Callable
from typing import Any

from distributed import Client, Future

from .. import _dask_internals as dx
from .. import _runtime
from .._protocol import (
    CONSUMED_OP,
    OUTCOME_INDEX,
    RELEASE_OP,
    ErrorValue,
    Key,
    as_key,
    task_of_yield,
    yield_key,
)
from ..exceptions import (
    ObjectLostError,
    TaskCancelledError,
    WorkerCrashedError,
    translate,
)
from . import locations, promotion
from .refs import InlineValue, ObjectRef, bind_ref, deliver_result

_registry: weakref.WeakValueDictionary[str, GenState] = weakref.WeakValueDictionary()
# Generator calls still running: held here until their task ends, as Ray runs a generator to
# its end even when the caller drops it (what it yields then is freed at once). A caller
# process that exits still stops them: its client leaves, and the scheduler releases the task.
_running: set[GenState] = set()
# Backpressure index that lets a producer run on unpaused (its consumer is gone).
NO_CONSUMER = 2**62


def on_yield_message(client: Client) -> Callable[..., None]:
    """The client's handler for ``daskgen-yield`` (runs on the client's event loop)."""

    def handler(
        task: str, items: list, large: list | None = None, worker: str | None = None, **_: Any
    ) -> None:
        if large and worker is not None:
            locations.note(worker, [as_key(key) for key in large])
        state = _registry.get(task)
        if state is not None and state.mode == "streaming" and worker is not None:
            connect_to(client, worker)  # its next small yields come from there at once
        orphans = []
        for key, index, inline, replace in items:
            key = as_key(key)
            if index == OUTCOME_INDEX:  # a direct actor call's own result (_actor_host)
                promotion.on_published(key)
                if state is not None:
                    state.on_outcome(inline)
                    continue
                if dx.client_refcount(client, key) == 0:
                    orphans.append(key)
                else:
                    deliver_result(client, key, inline)
            elif state is not None:
                state.on_yield(index, key, inline, replace)
            elif not replace and dx.client_refcount(client, key) == 0:
                orphans.append(key)  # the generator was dropped: nobody will take it
        if orphans:
            dx.client_release(client, orphans)

    return handler


early_received = 0  # yields this process took straight from their worker (tests)


def on_early_yields(client: Client, task: str, items: list) -> None:
    """Small yields of a streaming generator, straight from its worker (``Producer._send_early``;
    on the client's loop): handed out now, settled by the scheduler's announcement."""
    global early_received
    state = _registry.get(task)
    if state is not None:
        early_received += len(items)
        for key, index, inline in items:
            state.on_early(index, as_key(key), inline)


def _no_connection(client: Client, worker: str) -> None:
    pass


# Set by the client layer (``_client.actor_channel``): open this client's connection to a
# worker that runs its streaming generators, if it has none yet, without waiting for it.
connect_to: Callable[[Client, str], None] = _no_connection


def on_cancelled_keys(client: Client) -> Callable[..., None]:
    """Wrap the client's ``cancelled-keys`` handler: a value lost with its worker is not cancelled.

    Dask forgets a published yield (or a ``put`` value) whose only copy was on a worker that
    died, and tells its holders it was cancelled ("already forgotten"). While the generator is
    being re-run, the yield will be published again: the ref just waits. When nothing will
    produce it again, the ref raises ``ObjectLostError`` saying what was lost and why.
    """
    dask_handler = dx.client_stream_handler(client, "cancelled-keys")

    def handler(keys: list[Key], reason: str | None = None, **kwargs: Any) -> None:
        others = []
        settle: dict[int, tuple[GenState, list[Key]]] = {}
        for key in keys:
            key = as_key(key)
            task = task_of_yield(key)
            state = _registry.get(task) if task is not None else None
            if state is not None and state.task is not None:
                state.lose(key)
                settle.setdefault(id(state), (state, []))[1].append(key)
            elif reason == FORGOTTEN and restore_lost(key):
                pass  # a call whose stored arguments died with their worker: submitted again
            elif reason == FORGOTTEN and dx.client_refcount(client, key) > 0:
                dx.key_set_error(
                    client,
                    key,
                    ObjectLostError(
                        f"The value {key!r} was lost: the only worker holding it died, and nothing "
                        "can compute it again."
                    ),
                    even_if_done=True,
                )
            else:
                others.append(key)
        if others:
            dask_handler(keys=others, reason=reason, **kwargs)
        for state, lost in settle.values():
            # Dask tells us whether it re-runs the task (its result was lost too) right after
            # this message: decide once that has been handled.
            dx.on_client_loop(client, state.settle_lost, lost)

    return handler


FORGOTTEN = "already forgotten"  # Dask's reason when a key's data died with its worker


def _not_restored(key: Key) -> bool:
    return False


# Whether a forgotten key is a call that ``_client.stored_args`` submits again (it sets this).
restore_lost: Callable[[Key], bool] = _not_restored


class PublishedIndices:
    """The indices of a generator's published yields: every index below ``count``, and the few
    that arrived ahead of a gap (none while yields arrive in order, as the protocol sends them).

    A few words however many values the generator yields: a dict with an entry per yield ever
    published (what this replaced) reached 5 MB and 100,000 index objects per 100,000-yield
    call, all alive until the call's state went; freeing that block raised glibc's dynamic mmap
    threshold, after which the client's loop thread kept ~10 MB of freed heap that
    ``malloc_trim`` does not return (docs/performance.md, "Long-running drivers").
    """

    __slots__ = ("count", "ahead")

    def __init__(self) -> None:
        self.count = 0
        self.ahead: set[int] = set()

    def __contains__(self, index: int) -> bool:
        return index < self.count or index in self.ahead

    def __len__(self) -> int:
        return self.count + len(self.ahead)

    def high(self) -> int:
        """The highest index published (-1: none)."""
        return max(self.ahead, default=self.count - 1)

    def add(self, index: int) -> None:
        if index < self.count:
            return
        if index > self.count:
            self.ahead.add(index)
            return
        count, ahead = index + 1, self.ahead
        while count in ahead:
            ahead.discard(count)
            count += 1
        self.count = count


class GenState:
    """What the caller knows about one generator task: published yields, and whether it ended."""

    def __init__(
        self,
        client: Client,
        task_key: str,
        mode: str,
        backpressure: int | None,
        settle_at_end: bool = False,
    ) -> None:
        self.client = client
        self.task: Future = None  # type: ignore[assignment]  # set by attach()
        self.task_key = task_key
        self.mode = mode
        self.backpressure = backpressure
        self.published = PublishedIndices()
        # Futures of published yields held for the caller until it takes their refs
        # (streaming and dynamic): as many as are waiting to be taken, not one per yield.
        self._held: dict[int, Future] = {}
        # Inline values by index: held here until handed to a ref, then only weakly.
        self.cells: weakref.WeakValueDictionary[int, InlineValue] = weakref.WeakValueDictionary()
        self._held_cells: dict[int, InlineValue] = {}
        self.n_static = 0  # num_returns=N: the caller holds N refs made before their keys exist
        self.lent: list[ObjectRef] = []  # refs inside the task's arguments, kept alive with it
        # Static refs' get waits for the task: an in-task retry may turn a yield into an error.
        self.settle_at_end = settle_at_end
        self.cancelled = False
        self.abandoned = False  # nobody in this process will take the yields any more
        self.lost: set[int] = set()  # yields lost with a worker, not published again yet
        # Streaming yields that came straight from their worker (``on_early``), not announced
        # by the scheduler yet: their keys are this state's (``promotion``) until then, and
        # those dropped meanwhile are released once it knows them.
        self.early: set[int] = set()
        self.dropped_early: set[Key] = set()
        self.done = False
        self.cond = threading.Condition()
        self._waiters: list[tuple[int, concurrent.futures.Future]] = []
        self._on_publish: dict[int, list[Callable[[], None]]] = {}
        # Where backpressure progress goes: the scheduler (a task), or an actor's host.
        self.send_consumed: Callable[[dict[str, Any]], None] = lambda msg: _runtime.send(
            client, msg
        )
        # Registered before the task is submitted: no yield message can arrive unclaimed.
        _registry[self.task_key] = self

    def attach(self, task: Future) -> None:
        """Hold the task's future (keeps the task running until it ends) and watch for its end."""
        self.task = task
        _running.add(self)
        dx.on_future_done(self.client, task, _notify_done, weakref.ref(self))

    def abandon(self) -> None:
        """The caller dropped everything it got from this call (from any thread, e.g. a
        finaliser): the task runs on, and its yields are freed as they come."""
        try:
            dx.on_client_loop(self.client, self._abandon)
        except Exception:  # the client or its loop is closed: nothing is left to free
            pass

    def _abandon(self) -> None:
        with self.cond:
            self.abandoned = True
            if self.mode != "static":
                # The futures held for refs never handed out: dropped, so Dask frees the keys.
                self._held.clear()
                self._held_cells.clear()
        if self.backpressure and not self.done:
            # A paused producer would wait forever for a consumer that is gone.
            self.send_consumed({"op": CONSUMED_OP, "task": self.task_key, "index": NO_CONSUMER})

    # -- events, on the client's loop ---------------------------------------------------------

    def on_early(self, index: int, key: Key, inline: bytes) -> None:
        """A small streaming yield, straight from its worker, before the scheduler's
        announcement (on the loop): ``next()`` may hand out its ref now; its value is inline.
        Until the announcement, dropping the ref is held back and passing it on waits
        (``promotion``: the scheduler must know the key first)."""
        with self.cond:
            if index in self.published or self.done or self.abandoned or self.cancelled:
                return  # announced already (the scheduler was quicker), or nobody takes it
            cell = self.cells.get(index)
            if cell is None:
                cell = self.cells[index] = InlineValue()
            cell.blob = inline
            self.published.add(index)
            self._held[index] = dx.light_future(key, self.client)
            self._held_cells[index] = cell
            self.early.add(index)
            promotion.own(key, self, publishing=True)
            self._wake()

    # ``promotion``'s owner of early yields' keys (see ``on_early``)
    def released(self, key: Key) -> None:
        self.dropped_early.add(key)

    def send(self, msg: dict[str, Any]) -> None:
        pass  # the key's worker has published it already: nothing to ask there

    def completed(self, key: Key) -> None:
        pass

    def _settle_early(self, index: int, key: Key, inline: bytes | None) -> None:
        """The scheduler announced a yield that came early: a real key now (on the loop)."""
        self.early.discard(index)
        cell = self.cells.get(index)
        if cell is not None and inline is not None and cell.blob != inline:
            cell.blob = inline  # a re-run's: the cluster's value wins, as after a loss
        promotion.on_published(key)
        if key in self.dropped_early:
            self.dropped_early.discard(key)
            _runtime.send(self.client, {"op": RELEASE_OP, "keys": [key]})
        else:
            dx.key_finish(self.client, key)

    def on_yield(self, index: int, key: Key, inline: bytes | None, replace: bool) -> None:
        if index in self.early and not replace:
            self._settle_early(index, key, inline)
            return
        with self.cond:
            cell = self.cells.get(index)
            if replace:  # a published yield turned into an error
                if cell is not None:
                    cell.blob = inline
                return
            if index in self.published:
                # A re-run published it again after a loss: the key is the same, and back,
                # with the re-run's value.
                if index in self.lost:
                    self.lost.discard(index)
                    if cell is not None:
                        cell.blob = inline
                dx.key_finish(self.client, key)
                return
            self.published.add(index)
            if self.abandoned and self.mode != "static":
                dx.client_release(self.client, [key])  # nobody here will take it
                return
            if cell is None:
                cell = self.cells[index] = InlineValue()
            cell.blob = inline
            if self.mode == "static":
                if dx.client_refcount(self.client, key) == 0:
                    dx.client_release(self.client, [key])
            else:
                self._held[index] = dx.light_future(key, self.client)
                self._held_cells[index] = cell
            dx.key_finish(self.client, key)
            callbacks = self._on_publish.pop(index, [])
            self._wake()
        for cb in callbacks:
            cb()

    def on_outcome(self, inline: bytes | None) -> None:
        """A direct actor call's outcome was published: the call has ended (on the loop)."""
        cell = self.cells.get(OUTCOME_INDEX)
        if cell is not None and inline is not None:
            cell.arrive(inline)
        dx.key_finish(self.client, self.task_key)

    def fail(self, error: BaseException | None) -> None:
        """The call ended without its outcome (on the loop): its actor died, or it stopped."""
        dx.key_set_error(self.client, self.task_key, error or TaskCancelledError())

    def on_done(self) -> None:
        if self.task.status in ("finished", "error", "cancelled"):
            _running.discard(self)  # (a lost task is re-run: still held)
        if self.early and self.task.status != "lost":
            # Came early, never announced (their worker died first): readable here from
            # their inline value, but they cannot be passed on.
            self.early.clear()
            self.dropped_early.clear()
            promotion.owner_lost(
                self,
                ObjectLostError(
                    f"A yield of {self.task_key} was lost with its worker before the cluster "
                    "registered it; its value is only in this process."
                ),
            )
        with self.cond:
            self.done = True
            callbacks = [cb for cbs in self._on_publish.values() for cb in cbs]
            self._on_publish.clear()
            self._wake()
        self._fail_lost()
        if self.n_static:
            failure = self.failure()
            if failure is not None:
                # The caller's static refs for yields that never came would wait forever.
                missing = [i for i in range(self.n_static) if i not in self.published]
                for i in missing:
                    dx.key_set_error(self.client, yield_key(self.task_key, i), failure)
        for cb in callbacks:
            cb()

    def lose(self, key: Key) -> None:
        """Yield ``key`` died with its worker: wait for a re-run to publish it again."""
        self.lost.add(int(key[1]))
        dx.key_lose(self.client, key)

    def settle_lost(self, keys: list[Key]) -> None:
        """After a loss: if the task itself is being re-run, wait for it; else settle now."""
        if self.task.status in ("lost", "pending"):
            if self.done:  # its result died too, so Dask runs it again: watch the new run
                self.done = False
                _running.add(self)
                dx.on_future_done(self.client, self.task, _notify_done, weakref.ref(self))
            return
        if self.done:
            self._fail_lost()

    def _fail_lost(self) -> None:
        """The task has ended: settle the yields lost with a worker and not published again.

        * The task ran again to the end (so it yielded fewer values than the first run): those
          refs are invalid, and raise an error naming both counts, even the ones whose first
          value came inline (a re-run never mixes with the first run's values).
        * The task did not run again (no retries left): a value that came inline with its yield
          is still readable here; the others raise ``ObjectLostError``.
        """
        lost = sorted(self.lost)
        if not lost:
            return
        self.lost.clear()
        rerun_finished = self.task.status == "finished"
        first_run = max(len(self.published), self.n_static)
        for index in lost:
            key = yield_key(self.task_key, index)
            cell = self.cells.get(index)
            if rerun_finished:
                err: BaseException = ObjectLostError(
                    f"Yield {index} of {self.task_key} is invalid: the generator was re-run after "
                    f"its worker died and yielded {lost[0]} values where the first run yielded "
                    f"{first_run} (refs {lost[0]}..{first_run - 1} are invalid)."
                )
                if cell is not None:
                    cell.blob = pickle.dumps(ErrorValue(err))
            elif cell is not None and cell.blob is not None:
                dx.key_finish(self.client, key)  # delivered inline before the worker died:
                continue  # still readable here (though gone from the cluster)
            else:
                err = ObjectLostError(
                    f"Yield {index} of {self.task_key} was lost: the only worker holding it "
                    "died, and the generator was not run again (no retries left)."
                )
            dx.key_set_error(self.client, key, err, even_if_done=True)

    def _wake(self) -> None:
        self.cond.notify_all()
        still = []
        for index, fut in self._waiters:
            if index in self.published or self.done or self.cancelled:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((index, fut))
        self._waiters = still

    # -- queries, from any thread ---------------------------------------------------------------

    def failure(self) -> BaseException | None:
        """Why the task ended without producing everything (cancel, worker death), if it did.

        Called on the client's loop too: never blocks (no ``Future.exception()``)."""
        status = self.task.status
        if status not in ("cancelled", "error"):
            return None
        cause = dx.future_exception(self.task)
        if cause is None:
            return (
                TaskCancelledError()
                if status == "cancelled"
                else (WorkerCrashedError(f"The task {self.task_key} failed."))
            )
        return translate(cause)

    def ready_future(self, index: int) -> concurrent.futures.Future:
        """Resolves once yield ``index`` is published or the task has ended."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.cond:
            if index in self.published or self.done:
                fut.set_result(None)
            else:
                self._waiters.append((index, fut))
        return fut

    def when_published(self, index: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` once yield ``index`` exists or the task has ended (maybe right now)."""
        with self.cond:
            if not (index in self.published or self.done):
                self._on_publish.setdefault(index, []).append(callback)
                return
        callback()

    def is_published(self, index: int) -> bool:
        return index in self.published

    def take(self, index: int) -> ObjectRef:
        """Hand the caller the ref of yield ``index`` (the state stops holding it)."""
        with self.cond:
            fut = self._held.pop(index, None)
            cell = self._held_cells.pop(index, None)
        assert fut is not None
        if self.backpressure:
            self.send_consumed({"op": CONSUMED_OP, "task": self.task_key, "index": index})
        return ObjectRef(fut, inline=cell)

    def ref(self, index: int, key: Key) -> ObjectRef:
        """Another ref to yield ``index``, sharing its future and inline value (dynamic)."""
        fut = self._held.get(index)
        if fut is None:
            return bind_ref(key, self.client, inline=self.cells.get(index))
        return ObjectRef(fut, inline=self.cells.get(index))

    def mark_cancelled(self) -> bool:
        """``cancel()`` of this generator: the next ref raises why (Ray skips the yields not
        taken yet). False if the task has ended already (nothing to stop, as in Ray)."""
        if self.task.done():
            return False
        with self.cond:
            self.cancelled = True
            self._wake()
        return True

    def wake(self) -> None:
        """Wake whoever waits on this generator (from any thread), to look again."""
        with self.cond:
            self.cond.notify_all()


def _notify_done(state_ref: weakref.ref[GenState]) -> None:
    state = state_ref()
    if state is not None:
        state.on_done()


class GenClaim:
    """Held by everything the caller got back from one generator call (its generator, its
    refs): once the last of them is gone, nobody here will take the call's yields."""

    __slots__ = ("state",)

    def __init__(self, state: GenState) -> None:
        self.state = state

    def __del__(self) -> None:
        self.state.abandon()


def static_refs(state: GenState, n: int) -> list[ObjectRef]:
    """The N refs of a ``num_returns=N`` call, usable before their keys exist.

    Each keeps the state alive. If the task dies or is cancelled before publishing a key,
    that ref fails with the reason instead of waiting forever.
    """
    state.n_static = n
    claim = GenClaim(state)
    return [
        ObjectRef(dx.light_future(yield_key(state.task_key, i), state.client), owner=claim)
        for i in range(n)
    ]
