"""Task submissions from the caller's thread, sent to the scheduler together: one
``update-graph`` message per burst of calls instead of one per call.

Why: a loop of ``f.remote(i)`` made one ``Client.submit`` each: a graph serialised, a wake-up
of the client's loop, a message the scheduler unpacks and materialises on its own (~0.26 ms of
the scheduler's loop each on the embedded cluster), about half of what 2,000 tiny tasks cost
there. Here each call takes its future at once (the ref the caller gets) and joins the current
batch; the first call of a batch asks the client's loop to send it, and the calls made until
the loop gets to it go in the same message (several, where their annotations differ: each
message carries one set). A lone call therefore waits for nothing more than before: the loop
wake-up that ``Client.submit`` made too.

Order: the batch is sent from the loop straight onto the scheduler stream
(``dx.client_send_now``), so anything the caller's thread sends after a call (a release, a
cancel, another client message) reaches the scheduler after it, as with ``Client.submit``; and a
batch holds its calls' futures until it is sent, so a ref dropped at once is released after
its task was submitted, never before. A batch that cannot be sent (the client closed, a value
Dask cannot serialise) fails its calls' refs with that error.

Inside a task too (its worker's client, whose loop is the worker's): the submitting task,
which Dask reads in the calling thread, is taken there and sent with the call (a batch's
messages are split where it changes, as where annotations do). Asynchronous clients keep
``Client.submit``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import dask
from distributed import Client, Future

from .. import _dask_internals as dx
from .._objects import refs
from .._protocol import Key


class _Batch:
    __slots__ = ("lock", "calls", "later")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.later = False  # only deferred calls wait: the send is due after their delay
        # (key, function, arguments, (submitting task, annotations), the call's future)
        self.calls: list[tuple[Key, Callable[..., Any], tuple[Any, ...], tuple, Future]] = []


_batches: weakref.WeakKeyDictionary[Client, _Batch] = weakref.WeakKeyDictionary()
_batches_lock = threading.Lock()


def submit(
    client: Client,
    key: Key,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    resources: dict[str, float] | None,
    retries: int,
    defer: float = 0.0,
) -> Future:
    """``client.submit(fn, *args, key=key, pure=False, resources=..., retries=...)``, batched
    with the calls around it (see the module's doc); returns the call's future.

    ``defer`` s: the call may wait that long for others to join it (the Dask tasks of direct
    calls, ``_client.direct``), unless a call that may not wait comes first, or :func:`flush`
    (the order between calls is kept either way)."""
    annotations = dict(dask.get_annotations())  # as Client._graph_to_futures merges them
    if retries:
        annotations["retries"] = retries
    if resources:
        annotations["resources"] = resources
    origin = (dx.submitting_task(), annotations)
    future = dx.light_future(key, client)
    with _batches_lock:
        batch = _batches.get(client)
        if batch is None:
            batch = _batches[client] = _Batch()
    with batch.lock:
        batch.calls.append((key, fn, args, origin, future))
        first = len(batch.calls) == 1
        if first:
            batch.later = bool(defer)
        elif batch.later and not defer:
            batch.later, first = False, True  # goes now, with the calls that could wait
    if first and defer:
        dx.client_loop_call_later(client, defer, _send, client, batch)
    elif first:
        dx.on_client_loop(client, _send, client, batch)
    return future


def flush(client: Client) -> None:
    """Send the calls waiting for their delay now (any thread): before anything else this
    client says about them reaches the scheduler (a cancel, a ref passed to another process)."""
    batch = _batches.get(client)
    if batch is None or not batch.later:
        return
    with batch.lock:
        if not batch.later:
            return
        batch.later = False
    dx.on_client_loop(client, _send, client, batch)


refs.flush_submissions = flush


def unrestrict(client: Client, key: Key) -> bool:
    """Let the call ``key``, still waiting in this client's batch, run on any worker (a direct
    call its worker had no slot for, ``_client.direct``). False if it is not waiting there."""
    batch = _batches.get(client)
    if batch is None:
        return False
    with batch.lock:
        for i, (k, fn, args, (task, annotations), future) in enumerate(batch.calls):
            if k == key:
                free = {
                    name: value
                    for name, value in annotations.items()
                    if name not in ("workers", "allow_other_workers")
                }
                batch.calls[i] = (k, fn, args, (task, free), future)
                return True
    return False


def _send(client: Client, batch: _Batch) -> None:
    """On the client's loop: send the batch, one message per run of calls that share their
    submitting task and annotations, in the order they were made."""
    with batch.lock:
        calls, batch.calls = batch.calls, []
        batch.later = False
    start = 0
    while start < len(calls):
        end = start + 1
        while end < len(calls) and calls[end][3] == calls[start][3]:
            end += 1
        run = calls[start:end]
        try:
            submitting, annotations = run[0][3]
            msg = dx.update_graph_message(
                [(k, f, a) for k, f, a, _, _ in run], annotations, submitting
            )
            dx.client_send_now(client, msg)
        except Exception as exc:  # noqa: BLE001 (each ref raises it, as submit would have)
            for key, *_ in run:
                dx.key_set_error(client, key, exc)
        start = end
    # the futures go only now: a ref dropped at once is released after its task was sent
