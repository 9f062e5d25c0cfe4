"""Keys, message names and shapes, and small value types: shared by every process daskgen
runs in (the driver, the scheduler, the workers). Imports nothing of daskgen but its errors.

Who sends what to whom::

    driver / task's client            scheduler (+ daskgen plugin)            worker
    ----------------------            ---------------------------             ------
    update-graph (Dask) ───────────>  daskgen_fire_and_forget,
                                      daskgen_max_retries annotations
                                                      compute-task (Dask) ──> TaskSpec runs
                                                                              the function
                                      daskgen-publish  <───────────────────── each yield, stored
                                      (register the keys,                     in worker memory
                                       held by the caller)                    (fast lane on the
    <─── daskgen-yield                                                        embedded cluster)
    <─── daskgen-result  <─────────── daskgen-result   <───────────────────── a small result
    daskgen-consumed ──────────────>  (forwarded)      ─────────────────────> backpressure
    daskgen-desire ────────────────>  a ref took in task data; early yields
    <─── daskgen-lost                 a desired key that will never exist
    daskgen-cancel ────────────────>  Dask cancel; interrupt (run) ─────────> _worker.interrupt
    daskgen-expect ────────────────>  a direct actor call publishing yields
    daskgen-handoff ───────────────>  a generator passed to this task: its stream comes here
    <─── daskgen-takeover             (the yields not taken yet; or why it cannot)
    <─── daskgen-handed               (to the process that passed it: let them go)
    daskgen-handoff-drop ──────────>  the call it was passed to ended without taking it
                                      daskgen-actor    <───────────────────── actor made/killed
    <─── daskgen-actor-died           (worker left, actor killed)

    actor calls, straight to the actor's worker (no scheduler hop), on the actor wire
    (``_worker.actor_wire``), or on TLS clusters the daskgen_actor_stream handler:
    ─────────────────────────────────────────────────────────────────────────> call, cancel,
    <──────────────────────────────────────────────────────────────────────── result, failed
                                                                               release, promote,
                                                                               ready, consumed

Every arrow on the scheduler's side is a handler of ``_scheduler.plugin`` (ordered batched
streams, except the fast lane, see ``_cluster.fastlane``); the generator protocol (ordering,
who holds each key when) is documented in ``_worker.publish``, the actor calls in
``_worker.actor_host``.

Keys:

* A remote call is one Dask task, key ``"<name>-<32 hex>"`` (``name`` is the function's name, so
  the dashboard shows ``split-...``). The hex part makes keys unguessable: Dask substitutes a
  string argument equal to an existing key (dask/distributed #3965).
* Yield ``i`` of task ``T`` is ``("<name>-yield-<same hex>", i)``; ``put`` values ``"put-<hex>"``.
* Errors that belong to one ref are stored as :class:`ErrorValue` under that ref's key: ``get``
  raises them, and a task receiving one as a top-level argument raises it, as in Ray.
"""

from __future__ import annotations

import itertools
import pickle
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
from dask.sizeof import sizeof

from . import _buffers

# Batching of daskgen's own streams on any cluster: its driver's client to the scheduler, and
# the scheduler to daskgen's clients (Dask hard-codes 10 ms and 2 ms; a sequential round trip
# waits on both). Other clients' connections keep Dask's.
DASKGEN_STREAM_INTERVAL_S = 0.001

VERSION = "0.1.0"  # daskgen's version: the driver, scheduler and workers must all have it

PUBLISH_OP = "daskgen-publish"
YIELD_OP = "daskgen-yield"
CONSUMED_OP = "daskgen-consumed"
RESULT_OP = "daskgen-result"
RELEASE_OP = "daskgen-release"  # client -> scheduler: Dask's client-releases-keys, in bulk
DESIRE_OP = "daskgen-desire"  # client -> scheduler: this client holds refs to these keys now
LOST_OP = "daskgen-lost"  # scheduler -> client: keys it desired will never exist
# client -> scheduler: cancel tasks as Ray's cancel() does (see _cancel)
CANCEL_OP = "daskgen-cancel"
# client -> scheduler: a direct actor call that publishes yields runs on a worker (or ended)
EXPECT_OP = "daskgen-expect"
# Task annotation: how many times a task may be re-run after its worker died (Ray's max_retries).
MAX_RETRIES_ANNOTATION = "daskgen_max_retries"
# Task annotation: run the task even if every ref to it is dropped (Ray's rule for calls).
FIRE_AND_FORGET_ANNOTATION = "daskgen_fire_and_forget"
ACTOR_OP = "daskgen-actor"  # worker -> scheduler: an actor was created or killed here
# On an actor's creation task: {"actor": id, "detached": bool}; the plugin ends the actor when
# that key is forgotten (no handle left anywhere), unless detached.
ACTOR_ANNOTATION = "daskgen_actor"
ACTOR_END_OP = "daskgen-actor-end"  # scheduler -> worker: no handle of this actor is left
ACTOR_DIED_OP = "daskgen-actor-died"  # scheduler -> every daskgen client
# client -> scheduler, first on each connection daskgen's plugin serves: this client is
# daskgen's (it gets ACTOR_DIED_OP; a plain Dask client of the cluster never gets daskgen ops).
CLIENT_OP = "daskgen-client"
PLUGIN_NAME = "daskgen"
# A direct actor call's own result, announced like a yield at this index (see _actor_host).
OUTCOME_INDEX = -1
# client -> worker: the connection on which a process sends actor calls (see _actor_host)
ACTOR_STREAM_OP = "daskgen_actor_stream"
# worker -> driver (Dask's events, Worker.log_event): what a task printed, for its owner
OUTPUT_TOPIC_PREFIX = "daskgen-print-"
# client/worker -> scheduler (a request, safe whether or not the scheduler has daskgen):
# is daskgen's plugin there, and of which version?
HELLO_OP = "daskgen_hello"
WORKERS_OP = "daskgen_workers"  # client -> scheduler request: workers able to host an actor
CLUSTER_OP = "daskgen_cluster"  # client -> scheduler request: every worker's host and resources
LANE_OP = "daskgen_lane"  # worker -> scheduler request: where the fast lane listens (or None)
# Placement groups (``_scheduler.placement``): a task's or actor creation's group and bundle,
# {"group": id, "bundle": index} (-1: any bundle; GATE_BUNDLE: runs anywhere once the group is
# created), and the requests a client makes of the scheduler's placement-group table.
PLACEMENT_ANNOTATION = "daskgen_placement"
GATE_BUNDLE = -2
PG_CREATE_OP = "daskgen_pg_create"
PG_REMOVE_OP = "daskgen_pg_remove"
PG_TABLE_OP = "daskgen_pg_table"
PG_LOOKUP_OP = "daskgen_pg_lookup"
PG_BUNDLE_OP = "daskgen_pg_bundle"
# A streaming generator passed to another task or actor (``_objects.handoff``, the scheduler's
# half in ``_scheduler.handoff``): the consumer's process asks to receive the stream
# (HANDOFF_OP), the scheduler answers it (TAKEOVER_OP: the yields it takes over, or why not) and
# tells the previous owner (HANDED_OP); a call that ended without taking it gives it up
# (HANDOFF_DROP_OP).
HANDOFF_OP = "daskgen-handoff"  # consumer's client -> scheduler
HANDOFF_DROP_OP = "daskgen-handoff-drop"  # previous owner's client -> scheduler
TAKEOVER_OP = "daskgen-takeover"  # scheduler -> consumer's client
HANDED_OP = "daskgen-handed"  # scheduler -> previous owner's client
# A consumed index from here on lets a paused producer run to its end: nobody consumes any more
# (``genstate.NO_CONSUMER`` has the same value).
NO_CONSUMER_INDEX = 2**62
# scheduler -> every daskgen client: why a worker left ({worker, kind, message}: the nanny
# ended it for memory, or its host or nanny is gone), for the error its tasks raise.
WORKER_LOST_OP = "daskgen-worker-lost"

Key = Any  # a Dask key: str or tuple


_PROCESS_TOKEN = uuid.uuid4().hex[:16]  # random per process: tokens are unique and unguessable
_counter = itertools.count()


def new_token() -> str:
    """A 32-hex token: this process's random prefix and a counter (``uuid4`` reads the OS's
    random source each time, which costs more than a whole task submission here)."""
    return f"{_PROCESS_TOKEN}{next(_counter):016x}"


def as_key(key: Any) -> Key:
    """A key as Dask knows it: a tuple key arrives as a list after msgpack."""
    return tuple(key) if isinstance(key, list) else key


def pack_keys(keys: list[Key]) -> tuple[list[Key], dict[str, list[int]]]:
    """``keys`` for a message that carries many (a release): the ``(name, index)`` keys as
    ``{name: [index, ...]}``, and the others as they are (:func:`unpack_keys` undoes it).

    A generator's yields then cost msgpack a small int each instead of a tuple with a
    ~50-character name: 63,000 yields released at once were a 3.3 MB frame, and Dask
    serialises a message it estimates over 10 MiB (such a batch, estimated 11 MiB) in another
    thread of the driver, whose own glibc arena kept ~10 MB after that one message.
    """
    others: list[Key] = []
    indexed: dict[str, list[int]] = {}
    for key in keys:
        if type(key) is tuple and len(key) == 2 and type(key[0]) is str and type(key[1]) is int:
            indexed.setdefault(key[0], []).append(key[1])
        else:
            others.append(key)
    return others, indexed


def unpack_keys(others: list[Any], indexed: dict[str, list[int]] | None) -> list[Key]:
    """The keys :func:`pack_keys` packed (after msgpack), each name shared by its keys."""
    keys = [as_key(key) for key in others]
    for name, indices in (indexed or {}).items():
        keys += [(name, index) for index in indices]
    return keys


def cancel_message(
    keys: list[Key], *, force: bool, recursive: bool, revoke: bool, reason: str
) -> dict[str, Any]:
    """``daskgen-cancel``, which a client (the driver's, or a task's) sends to the scheduler."""
    return {
        "op": CANCEL_OP,
        "keys": list(keys),
        "force": force,
        "recursive": recursive,
        "revoke": revoke,
        "reason": reason,
    }


class WorkerFunction:
    """A function of daskgen's worker side, named rather than imported (so that the scheduler's
    side can send it in Dask's ``run`` message without importing the worker's code)."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __call__(self, *args: Any, dask_worker: Any = None) -> Any:
        import importlib

        fn = getattr(importlib.import_module(self.module), self.name)
        return fn(*args, dask_worker=dask_worker)

    def __reduce__(self) -> tuple[Any, ...]:
        return WorkerFunction, (self.module, self.name)

    @property
    def __name__(self) -> str:  # what Dask logs
        return self.name


INTERRUPT = WorkerFunction("daskgen._worker.interrupt", "interrupt_all")
# A paused producer whose stream has no consumer any more runs on (``_scheduler.handoff``).
LET_GO = WorkerFunction("daskgen._worker.let_go", "let_go")


class Dep:
    """Placeholder, in pickled arguments, for the value of the i-th dependency future."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return Dep, (self.index,)


class Put:
    """Box for ``put`` values: since dask 2026.7, scatter unpacks bare builtin containers.

    Also for a task's result or a yield that is a builtin container (list, tuple, dict, set)
    too large to go inline (see :func:`boxed`): Dask moves a bare one between workers element
    by element (one serialised frame per item: a list of 300,000 ints took 5.7 s to send, its
    pickle 5 ms), which made a recursive quicksort on lists 30-40x slower than Ray. Boxed, it
    travels as one pickle. ``get`` and a task's arguments unwrap it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return Put, (self.value,)


class Packed:
    """A call's pickled arguments, when large, in the task Dask sends: ``blob`` the pickle,
    ``buffers`` the large buffers it refers to (NumPy arrays' memory, pickled out of band by
    ``_client.arguments``). Pickled itself with every one of them as an out-of-band buffer, so
    Dask's own pickling of the task (on the client, again on the scheduler for the worker)
    carries those bytes as frames of their own instead of copying them into each pickle.
    Unpickled, they are the received buffers."""

    __slots__ = ("blob", "buffers")

    def __init__(self, blob: Any, buffers: list[Any] | tuple[Any, ...] = ()) -> None:
        self.blob = blob
        self.buffers = buffers

    @property
    def nbytes(self) -> int:
        return memoryview(self.blob).nbytes + sum(memoryview(b).nbytes for b in self.buffers)

    def __reduce__(self) -> tuple[Any, ...]:
        return Packed, (
            pickle.PickleBuffer(self.blob),
            [pickle.PickleBuffer(b) for b in self.buffers],
        )


@sizeof.register(Packed)
def _sizeof_packed(packed: Packed) -> int:
    return packed.nbytes


OUT_OF_BAND_ARGS = 64 << 10  # bytes: a call's pickled arguments from this size go as Packed


class Stored:
    """A call's pickled arguments, when larger still, stored as a key of their own on the
    submitter's side of the cluster (``_client.stored_args``) and passed as the task's
    dependency number ``index``: the task's message stays small, and the bytes move from
    worker to worker only if the task does not run where they are."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return Stored, (self.index,)


# bytes: a call's pickled arguments from this size go as Stored. Measured (docs/performance.md):
# below it, the store's announcement (a round trip before the task is submitted) costs more
# than it saves; 4 MiB arrays took 3 ms a call stored against 7-9 ms packed into the task.
STORED_ARGS = 1 << 20


def stored_args_key() -> str:
    return f"daskgen-args-{new_token()}"


_CONTAINERS = (list, tuple, dict, set)


def boxed(value: Any) -> Any:
    """``value`` as Dask should store it: a builtin container in a :class:`Put` box."""
    return Put(value) if type(value) in _CONTAINERS else value


@sizeof.register(Put)
def _sizeof_put(box: Put) -> int:
    return int(sizeof(box.value))


def task_key(name: str) -> str:
    return f"{name}-{new_token()}"


def submission_order(key: Key) -> str:
    """Sorts the task keys one process made (:func:`task_key`) in the order it made them: their
    tokens, this process's prefix and then a fixed-width counter. Other keys sort as ``""``."""
    return key.rpartition("-")[2] if isinstance(key, str) else ""


def yield_prefix(task: str) -> str:
    name, _, token = task.rpartition("-")
    return f"{name}-yield-{token}"


def yield_key(task: str, index: int) -> tuple[str, int]:
    return (yield_prefix(task), index)


def task_of_yield(key: Key) -> str | None:
    """The generator task that published ``key``, or None if ``key`` is not a yield."""
    if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str)):
        return None
    head, sep, token = key[0].rpartition("-yield-")
    return f"{head}-{token}" if sep else None


def dumps(value: Any, buffers: list[pickle.PickleBuffer] | None = None) -> bytes:
    """``value`` pickled (protocol 5), by cloudpickle if plain pickle cannot (lambdas, classes
    defined in ``__main__`` or a function); raises what cloudpickle raises. Given a list,
    large buffers go there out of band instead of into the bytes."""
    try:
        return pickle.dumps(value, protocol=5, buffer_callback=_collect(buffers))
    except Exception:
        if buffers is not None:
            buffers.clear()  # what the failed attempt handed out
        return cloudpickle.dumps(value, protocol=5, buffer_callback=_collect(buffers))


def _collect(buffers: list[pickle.PickleBuffer] | None) -> Callable[[Any], Any] | None:
    return None if buffers is None else buffers.append


def put_key() -> str:
    return f"put-{new_token()}"


DYNAMIC_CODE = "<dynamic-code>"  # the file cloudpickle gives code it pickles by value


def code_file(obj: Any) -> str | None:
    """The source file of a function, or of a class's first method (read where it is defined,
    before cloudpickle replaces it: see :func:`with_code_file`)."""
    code = getattr(obj, "__code__", None)
    if code is None and isinstance(obj, type):
        code = next((f.__code__ for f in vars(obj).values() if hasattr(f, "__code__")), None)
    return code.co_filename if code is not None else None


def with_code_file(obj: Any, filename: str | None) -> Any:
    """``obj`` (a function or class unpickled by value) with its code's file set back to
    ``filename``: cloudpickle names it ``<dynamic-code>`` (so that pickles are deterministic),
    and tracebacks in tasks then show no file and no line of the user's code."""
    if not filename or filename == DYNAMIC_CODE:
        return obj
    functions = [obj] if hasattr(obj, "__code__") else []
    if isinstance(obj, type):
        functions = [f for f in vars(obj).values() if hasattr(f, "__code__")]
    for fn in functions:
        if fn.__code__.co_filename == DYNAMIC_CODE:
            fn.__code__ = _refiled(fn.__code__, filename)
    return obj


def _refiled(code: Any, filename: str) -> Any:
    consts = tuple(
        _refiled(c, filename) if isinstance(c, type(code)) else c for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


def key_name(key: Key) -> str:
    """The user-facing function name in a key (``split`` for ``split-<hex>``)."""
    head = key[0] if isinstance(key, tuple) else key
    return str(head).rpartition("-")[0] or str(head)


@dataclass(frozen=True)
class ErrorValue:
    """An exception stored as a value: ``get`` and task arguments re-raise it."""

    error: BaseException


@dataclass
class GenOutcome:
    """What a generator task returns to Dask: small, whatever the generator yielded.

    ``count`` refs were published with indices ``0..count-1``; when ``error_index`` is not None,
    the ref at that index holds the error (dynamic and streaming modes add it after the values).
    """

    task: str
    mode: str
    count: int
    error_index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def keys(self) -> list[tuple[str, int]]:
        prefix = yield_prefix(self.task)
        return [(prefix, i) for i in range(self.count)]


# ------------------------------------------------------------------ the actor wire's framing

# A caller's get takes values at least this large straight from the worker holding them: over
# the embedded cluster's lane (an 8 MB array ~1.3-2 ms over a Unix socket here), else over the
# wire (~2.4 ms on its Unix socket from the same host, ~3-3.5 ms over local TCP, against
# ~7.5 ms by Dask's gather); smaller ones take Dask's path.
FETCH_MIN_BYTES = 1 << 20

_WIRE_HEADER = struct.Struct("!Q")
WIRE_TOKEN_BYTES = 32
WIRE_READ_BYTES = 1 << 18
WIRE_SOCKET_BUFFER = 4 << 20  # bytes, each way (see wire_socket)
SMALL_CHUNK = 1 << 16  # bytes: a received chunk smaller than this is a plain bytearray
# A result that cannot be written within this many seconds (the caller stopped reading) closes
# its connection: the caller sees its calls fail, the worker's loop is never held longer.
WIRE_WRITE_TIMEOUT_S = 10.0


def wire_socket(sock: Any) -> None:
    """Set up a socket of the actor wire: no Nagle delay, and blocking, with the kernel
    bounding each write (``SO_SNDTIMEO``) rather than Python (a Python timeout makes every
    send and receive poll first: two system calls, each giving up and taking back the GIL)."""
    import socket

    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Room for a large fetched value to pass in few writes: 8 MB crossed a Unix socket in
    # ~1.6 ms with 4 MiB buffers, ~2.7 ms with the default ones, here (the kernel takes the
    # memory only while data waits in them).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WIRE_SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, WIRE_SOCKET_BUFFER)
    sock.settimeout(None)
    seconds = int(WIRE_WRITE_TIMEOUT_S)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, 0))


def wire_frame(msgs: list[dict[str, Any]]) -> bytes:
    """Messages as one frame of the actor wire (``_worker.actor_wire``)."""
    payload = pickle.dumps(msgs, protocol=5)
    return _WIRE_HEADER.pack(len(payload)) + payload


def cut_frames(buf: bytearray) -> list[list[dict[str, Any]]]:
    """The whole frames at the start of ``buf``, removed from it (the rest waits for more).

    A frame whose last message has ``raw`` (a list of sizes) is followed on the wire by that
    many bytes, not framed (a fetched value's pickle and buffers: ``read_raw`` takes them):
    cutting stops after it."""
    out = []
    start = 0
    with memoryview(buf) as view:
        while len(buf) - start >= _WIRE_HEADER.size:
            (size,) = _WIRE_HEADER.unpack_from(buf, start)
            end = start + _WIRE_HEADER.size + size
            if end > len(buf):
                break
            with view[start + _WIRE_HEADER.size : end] as payload:
                batch = pickle.loads(payload)
            out.append(batch)
            start = end
            if batch and batch[-1].get("raw"):
                break
    if start:
        del buf[:start]
    return out


def _uninitialized(size: int) -> Any:
    """A writable buffer of ``size`` bytes, not zeroed first (``bytearray(size)`` writes zeros
    to all of it, which the data received then overwrites: ~0.5-1 ms per 8 MB here), reused
    where it can be (``_buffers``: no fresh pages to fault in)."""
    if size < SMALL_CHUNK:
        return bytearray(size)
    return _buffers.take(size)


class RawChunks:
    """The unframed chunks of ``sizes`` bytes that follow a frame (see ``cut_frames``), as they
    arrive: first what ``buf`` holds already (removed from it), the rest received straight into
    each chunk's own buffer (``space``, then ``received``), which the value unpickled from them
    then lives in (no copy)."""

    def __init__(self, buf: bytearray, sizes: list[int]) -> None:
        self.chunks = [_uninitialized(size) for size in sizes]
        self._views = [memoryview(chunk).cast("B") for chunk in self.chunks]
        self._at = 0  # the chunk being filled
        self._have = 0  # bytes of it received
        self._skip_full()
        while buf and not self.done:
            view = self.space()
            take = min(len(buf), len(view))
            view[:take] = buf[:take]
            del buf[:take]
            self.received(take)

    @property
    def done(self) -> bool:
        return self._at == len(self._views)

    def space(self) -> memoryview:
        """Where the next bytes go."""
        return self._views[self._at][self._have :]

    def received(self, count: int) -> bool:
        """``count`` bytes were written into ``space()``; True once every chunk is full."""
        self._have += count
        self._skip_full()
        return self.done

    def _skip_full(self) -> None:
        while self._at < len(self._views) and self._have == len(self._views[self._at]):
            self._views[self._at].release()
            self._at += 1
            self._have = 0


def read_raw(sock: Any, buf: bytearray, sizes: list[int]) -> list[Any]:
    """``RawChunks`` read from a blocking socket."""
    raw = RawChunks(buf, sizes)
    while not raw.done:
        got = sock.recv_into(raw.space())
        if not got:
            raise ConnectionError("the wire closed inside a value it carried")
        raw.received(got)
    return raw.chunks
