"""daskgen's scheduler extension: a ``SchedulerPlugin`` (runs in the scheduler's process) that
registers yields, forwards results and backpressure, keeps calls running, cancels them as Ray
does, and tracks actors. Every route it adds is in :attr:`DaskgenSchedulerPlugin.routes`
(``_protocol`` shows who sends what to whom):

Batched-stream messages from workers:

* ``daskgen-publish`` {task, caller, items}: register values the worker already holds (yields,
  direct actor calls' results) as keys owned by the caller, then tell the caller
  (``daskgen-yield``); if the caller is gone, the worker drops them.
* ``daskgen-result`` {caller, key, blob}: a small task result sent ahead of the task's
  completion, forwarded to the caller (its ``get`` needs no further round trip).
* ``daskgen-actor`` {actor, alive}: an actor was created on (or killed from) that worker. When
  a worker holding actors leaves, or an actor is killed, every client gets
  ``daskgen-actor-died`` {actor, reason}.

Batched-stream messages from clients:

* ``daskgen-consumed`` {task, index}: a consumer's progress, forwarded to the producing worker
  (backpressure).
* ``daskgen-release`` {keys, indexed}: Dask's ``client-releases-keys``, with the messages to
  each worker merged into one (``dx.scheduler_release``); ``(name, index)`` keys come packed
  as ``{name: [index, ...]}`` (``_protocol.pack_keys``).
* ``daskgen-desire`` {keys}: Dask's ``client-desires-keys`` for refs a client took from task
  data, which also remembers yields not published yet; a key that will never exist is answered
  with ``daskgen-lost`` {keys, kind, why}.
* ``daskgen-expect`` {task, worker, ended}: a direct actor call will publish yields (its early
  wants wait as for a generator task).
* ``daskgen-cancel`` {keys, force, recursive, revoke, reason}: Ray's cancel (see
  ``_client.cancel``), interrupting tasks on the workers that run them (Dask's ``run``).
* ``daskgen-handoff``, ``daskgen-handoff-drop``: a streaming generator passed to another task
  or actor; its yields go to the consumer from then on (``_scheduler.handoff``).

Request handlers: named actors, by namespace (``_scheduler.names`` lists them), and
``daskgen_hello``, ``daskgen_workers``, ``daskgen_cluster`` below.

Hooks: ``update_graph`` (Ray's ``max_retries``, and calls made fire-and-forget as their graph
arrives), ``transition`` (calls that ended, early wants settled), ``remove_worker`` and
``remove_client``.

A stream handler that raised would close the sender's whole connection, so every one catches
everything and logs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from .. import _dask_internals as dx
from .._protocol import (
    ACTOR_ANNOTATION,
    ACTOR_DIED_OP,
    ACTOR_END_OP,
    ACTOR_OP,
    CANCEL_OP,
    CLIENT_OP,
    CLUSTER_OP,
    CONSUMED_OP,
    DASKGEN_STREAM_INTERVAL_S,
    DESIRE_OP,
    EXPECT_OP,
    FETCH_MIN_BYTES,
    FIRE_AND_FORGET_ANNOTATION,
    HELLO_OP,
    INTERRUPT,
    LOST_OP,
    MAX_RETRIES_ANNOTATION,
    NO_CONSUMER_INDEX,
    OUTPUT_TOPIC_PREFIX,
    PLACEMENT_ANNOTATION,
    PLUGIN_NAME,
    PUBLISH_OP,
    RELEASE_OP,
    RESULT_OP,
    VERSION,
    WORKERS_OP,
    YIELD_OP,
    as_key,
    task_of_yield,
    unpack_keys,
)
from ..exceptions import NO_WORKER_REASON
from .handoff import StreamHandoffs
from .lost_workers import LostWorkers
from .names import NamedActors
from .placement import PlacementGroups
from .waiting import WaitingTasks

logger = logging.getLogger("daskgen")

PROBE_S = 10.0  # s: how long a joining worker has to say which daskgen it has
PROBE_TRIES = 3  # times it is asked before a worker that never answers is kept off


UNKNOWN_KEY_WAIT_S = 30.0  # s: a ref taken to a key the scheduler has not heard of yet
FORGOTTEN_KEPT = 10_000  # the last keys forgotten, told apart from those still to come


class DaskgenSchedulerPlugin(SchedulerPlugin):
    """Installs daskgen's stream handlers on the scheduler (idempotent, by name)."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Any = None
        # Yields wanted by clients before their generator published them: key -> clients,
        # and generator task -> those keys (see on_desire).
        self.early_wants: dict[Any, set[str]] = {}
        # Refs taken to keys the scheduler has not heard of yet (a task just submitted, whose
        # ref reached another process first: a direct actor call's arguments go straight to
        # the actor), key -> the clients that took them: granted as its graph comes, else lost
        # after UNKNOWN_KEY_WAIT_S.
        self.unknown_wants: dict[Any, set[str]] = {}
        # The last keys the scheduler forgot: a ref taken to one of them was taken too late.
        self.forgotten: collections.OrderedDict[Any, None] = collections.OrderedDict()
        self.early_by_task: dict[str, set[Any]] = {}
        # Direct actor calls that publish yields, not ended: call key -> worker (on_expect).
        self.expected: dict[Any, str] = {}
        # daskgen's fire-and-forget calls that have not run yet (see transition).
        self.fire_and_forget: set[Any] = set()
        # daskgen's tasks not ended yet, and the workers that cannot run them (see add_worker).
        self.tasks: set[Any] = set()
        self.lacking: dict[str, str] = {}  # worker address -> what it has instead
        self.probing: set[str] = set()  # joined workers being asked what they have
        self.clients: set[str] = set()  # daskgen's clients (CLIENT_OP): they get actor news
        self.actors: dict[str, set[str]] = {}  # worker address -> actor ids living there
        # Creation task key -> (actor id, detached): the actor lives as long as the key does.
        self.actor_keys: dict[Any, tuple[str, bool]] = {}
        # Actors with max_restarts: actor id -> [creation key, restarts left (-1: no limit)],
        # and those waiting for a worker to restart on (-> why they were lost).
        self.restartable: dict[str, list[Any]] = {}
        self.to_restart: dict[str, str] = {}
        self.named = NamedActors()  # (namespace, name) -> pickled handle
        self.placement: PlacementGroups | None = None  # placement groups (made in start)
        self.lost: LostWorkers | None = None  # why workers left (made in start)
        # Generator streams passed to other tasks: who receives them now (made in start).
        self.handoffs: StreamHandoffs | None = None
        # daskgen's tasks waiting behind others on a busy worker (made in start).
        self.waiting: WaitingTasks | None = None

    @property
    def routes(self) -> dict[str, Any]:
        """Batched-stream op -> handler (see the module's docstring)."""
        return {
            PUBLISH_OP: self.on_publish,
            RESULT_OP: self.on_result,
            ACTOR_OP: self.on_actor,
            CONSUMED_OP: self.on_consumed,
            DESIRE_OP: self.on_desire,
            RELEASE_OP: self.on_release,
            CLIENT_OP: self.on_client,
            EXPECT_OP: self.on_expect,
            CANCEL_OP: self.on_cancel,
        }

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        for op, handler in self.routes.items():
            dx.scheduler_add_stream_handler(scheduler, op, handler)
        for route, handler in self.named.routes.items():
            dx.scheduler_add_handler(scheduler, route, handler)
        dx.scheduler_add_handler(scheduler, HELLO_OP, self.hello)
        dx.scheduler_add_handler(scheduler, WORKERS_OP, self.able_workers)
        dx.scheduler_add_handler(scheduler, CLUSTER_OP, self.cluster)
        self.placement = PlacementGroups(scheduler, self._able, self._home)
        for op, handler in self.placement.routes.items():
            dx.scheduler_add_handler(scheduler, op, handler)
        self.lost = LostWorkers(scheduler, self._broadcast)
        for worker in dx.scheduler_workers(scheduler):  # those that joined before the plugin
            self.lost.worker_joined(worker)
        dx.scheduler_add_handler(scheduler, "daskgen_worker_lost", self.lost.why)
        self.handoffs = StreamHandoffs(scheduler)
        self.waiting = WaitingTasks(scheduler, self.tasks.__contains__, self._able)
        for op, handler in self.handoffs.routes.items():
            dx.scheduler_add_stream_handler(scheduler, op, handler)

    def _home(self, actor: str) -> str | None:
        """The worker hosting ``actor`` (None: not known here)."""
        return next((w for w, ids in self.actors.items() if actor in ids), None)

    def log_event(self, topic: str, msg: Any) -> None:
        if self.lost is not None:
            self.lost.log_event(topic, msg)

    def on_client(self, client: str, **_: Any) -> None:
        """``daskgen-client``: ``client`` is daskgen's (see ``_broadcast``); its stream from
        here batches at daskgen's interval (a plain client's keeps Dask's)."""
        self.clients.add(client)
        stream = dx.scheduler_stream_to(self.scheduler, client)
        dx.set_batching_interval(stream, DASKGEN_STREAM_INTERVAL_S)

    def _broadcast(self, msg: dict[str, Any]) -> None:
        """``msg`` to every daskgen client (a plain Dask client never gets daskgen's ops)."""
        s = self.scheduler
        for client in [c for c in dx.scheduler_clients(s) if c in self.clients]:
            dx.scheduler_send_to_client(s, client, dict(msg))

    def cluster(self) -> list[dict[str, Any]]:
        """``daskgen_cluster``: every worker's host, threads, memory and resources (declared
        and in use), for ``cluster_resources``, ``available_resources`` and ``nodes``."""
        return dx.scheduler_worker_states(self.scheduler)

    def hello(self) -> str:
        """``daskgen_hello``: the plugin is here, of this version."""
        return VERSION

    def able_workers(self) -> dict[str, Any]:
        """``daskgen_workers``: ``able``, the workers known to run daskgen's tasks with the
        resources each declares (where a new actor may be placed: the client restricts its
        creation to one of them); ``busy``, their tasks per thread, and ``actors``, the actors
        each hosts (the client prefers a worker with a free thread, then the fewest actors);
        ``lacking``, the workers that cannot run daskgen's tasks and what they have."""
        able = [w for w in dx.scheduler_worker_states(self.scheduler) if self._able(w["address"])]
        return {
            "able": {w["address"]: w["resources"] for w in able},
            "busy": {w["address"]: w["processing"] / max(w["nthreads"], 1) for w in able},
            "actors": {w["address"]: len(self.actors.get(w["address"], ())) for w in able},
            "booked": self.placement.booked() if self.placement is not None else {},
            "lacking": dict(self.lacking),
            "probing": sorted(self.probing),
        }

    def _able(self, worker: str) -> bool:
        """Whether ``worker`` is known to run daskgen's tasks (asked, and it has daskgen)."""
        return worker not in self.lacking and worker not in self.probing

    def on_publish(self, worker: str, task: str, caller: str, items: list, **_: Any) -> None:
        try:
            self._publish(worker, task, caller, items)
        except Exception:  # never let an error close the worker's stream
            logger.exception("daskgen: failed to publish yields of %s from %s", task, worker)

    def _publish(self, worker: str, task: str, caller: str, items: list) -> None:
        s = self.scheduler
        if self.handoffs is not None and self.handoffs.streams:
            # passed to another task: it gets them
            caller = self.handoffs.owner(task, caller, worker)
        if not dx.scheduler_has_client(s, caller):
            # The caller is gone: nobody would ever release these keys, so never register them.
            dx.scheduler_free_on_worker(
                s, worker, [as_key(k) for k, _, _, _, replace in items if not replace]
            )
            return
        fresh: dict[Any, int] = {}
        duplicates = []
        announce = []
        for key, index, nbytes, inline, replace in items:
            key = as_key(key)
            if not replace and dx.scheduler_key_state(s, key) is not None:
                # A re-run republished an index the caller already has: the first value wins,
                # so no index ever mixes two attempts. Drop the new copy (unless it is the same
                # replica, on this very worker).
                if worker not in dx.scheduler_holders(s, key):
                    duplicates.append(key)
                continue
            if not replace:
                fresh[key] = nbytes
            announce.append((key, index, inline, replace))
        if duplicates:
            dx.scheduler_free_on_worker(s, worker, duplicates)
        if fresh:
            dx.scheduler_register_data(s, fresh, worker, caller)
            if self.early_wants:
                self._grant_early_wants(task, fresh)
            if task in self.expected and task in fresh:  # a direct call's outcome: it ended
                del self.expected[task]
                if task in self.early_by_task:
                    self._settle_early_wants(task, "memory")
        if announce:
            # Only keys new to the cluster may skip the queue to a caller in this process: no
            # earlier message can concern them (a republished or replaced yield may have one).
            direct = len(fresh) == len(announce)
            # The worker: where the caller's get can take large ones straight from
            # (``_client.fetch``), and where a streaming caller connects to get the next small
            # ones at once (``GenState.on_early``).
            msg = {"op": YIELD_OP, "task": task, "items": announce, "worker": worker}
            large = [key for key, nbytes in fresh.items() if nbytes >= FETCH_MIN_BYTES]
            if large:
                msg["large"] = large
            dx.scheduler_send_to_client(s, caller, msg, direct=direct)

    # -- refs bound in other processes ---------------------------------------------------------

    def on_desire(self, client: str, keys: list, **_: Any) -> None:
        """A client took refs to ``keys`` (unpickled them): Dask's ``client-desires-keys``,
        plus what Dask drops with a warning. A yield its generator has not published yet (a
        static ref passed on while the generator runs, or a yield being re-published after a
        worker died) is remembered and granted when it is published; a key that can never
        come back fails at once for that client, instead of leaving its ``get`` waiting."""
        try:
            s = self.scheduler
            known, lost = [], []
            for key in map(as_key, keys):
                if dx.scheduler_key_state(s, key) is not None:
                    known.append(key)
                    continue
                task = task_of_yield(key)
                if task is not None and (
                    task in self.expected or dx.scheduler_key_state(s, task) not in (None, "memory")
                ):
                    self.early_wants.setdefault(key, set()).add(client)
                    self.early_by_task.setdefault(task, set()).add(key)
                elif task is None and key not in self.forgotten:
                    if key not in self.unknown_wants:
                        dx.scheduler_call_later(s, UNKNOWN_KEY_WAIT_S, self._unknown_gone, key)
                    self.unknown_wants.setdefault(key, set()).add(client)
                else:
                    lost.append(key)
            if known:
                dx.scheduler_desire(s, known, client)
            if lost:
                self._tell_lost(client, lost, "lost", "it was freed before this process took it")
        except Exception:
            logger.exception("daskgen: failed to register refs of %s", client)

    def _unknown_gone(self, key: Any) -> None:
        """A key refs were taken to never reached the scheduler (or came and went)."""
        for client in self.unknown_wants.pop(key, ()):
            self._tell_lost(client, [key], "lost", "it was freed before this process took it")

    def on_release(
        self, client: str, keys: list, indexed: dict[str, list[int]] | None = None, **_: Any
    ) -> None:
        """A client dropped its refs to ``keys`` (and the ``indexed`` ones, see
        ``_protocol.pack_keys``): Dask's release, one message per worker."""
        try:
            dx.scheduler_release(self.scheduler, unpack_keys(keys, indexed), client)
        except Exception:
            logger.exception("daskgen: failed to release keys of %s", client)

    def on_expect(self, client: str, task: Any, worker: str, ended: bool = False, **_: Any) -> None:
        """A direct actor call (no Dask task) will publish yields from ``worker``; or it
        ``ended`` without its outcome. Early wants of its yields wait as for a generator task."""
        try:
            task = as_key(task)
            if ended:
                self.expected.pop(task, None)
                if task in self.early_by_task:
                    self._settle_early_wants(task, "erred")
            else:
                self.expected[task] = worker
        except Exception:
            logger.exception("daskgen: failed to record the actor call %s", task)

    def _grant_early_wants(self, task: str, fresh: dict[Any, int]) -> None:
        waiting = self.early_by_task.get(task)
        for key in fresh:
            clients = self.early_wants.pop(key, None)
            if not clients:
                continue
            if waiting is not None:
                waiting.discard(key)
            for client in clients:
                if dx.scheduler_has_client(self.scheduler, client):
                    dx.scheduler_desire(self.scheduler, [key], client)  # reports it in memory
        if waiting is not None and not waiting:
            del self.early_by_task[task]

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        """A call ended: Dask's fire-and-forget client lets go of it, even when it erred
        without running; and a generator with early wants ended, so the yields it did not
        publish never will be. A daskgen task that leaves its worker may leave it free for a
        task waiting elsewhere, and one sent to a busy worker may have a free one to go to
        (``waiting``)."""
        if self.waiting is not None and key in self.tasks:
            if start == "processing":
                self.waiting.left(key)
            elif finish == "processing":
                self.waiting.look()
        if finish not in ("memory", "erred", "forgotten"):
            return
        if finish == "forgotten":
            self.forgotten[key] = None
            if len(self.forgotten) > FORGOTTEN_KEPT:
                self.forgotten.popitem(last=False)
        if finish == "forgotten" and key in self.actor_keys:
            self._unreferenced(*self.actor_keys.pop(key))
        elif finish == "forgotten" and self.handoffs is not None and self.handoffs.streams:
            self.handoffs.forget(key)
        elif finish == "memory" and key in self.actor_keys:
            # A creation task finished: its actor lives where its result is. Known here before
            # any caller can reach the actor, which the worker's own "alive" message is not (a
            # caller may see the actor answer, and kill its worker, before that message left).
            actor = self.actor_keys[key][0]
            for worker in dx.scheduler_holders(self.scheduler, key):
                self.actors.setdefault(worker, set()).add(actor)
        self.tasks.discard(key)
        if self.placement is not None:
            self.placement.ended(key)
        if key in self.fire_and_forget:
            self.fire_and_forget.discard(key)
            if finish == "erred":
                # Dask releases it only on processing -> erred; a task that errs while it
                # waits (an argument failed) would stay wanted, and its arguments with it.
                dx.scheduler_release_fire_and_forget_soon(self.scheduler, key)
        if key in self.early_by_task:
            self._settle_early_wants(key, finish)

    def _settle_early_wants(self, key: Any, finish: str) -> None:
        try:
            why = {
                "memory": ("lost", "its generator ended without it"),
                "erred": ("failed", "its generator task failed"),
                "forgotten": ("cancelled", "its generator task was cancelled"),
            }[finish]
            by_client: dict[str, list[Any]] = {}
            for yield_key in self.early_by_task.pop(key):
                for client in self.early_wants.pop(yield_key, ()):
                    by_client.setdefault(client, []).append(yield_key)
            for client, keys in by_client.items():
                self._tell_lost(client, keys, *why)
        except Exception:
            logger.exception("daskgen: failed to settle the early wants of %s", key)

    def remove_client(self, scheduler: Any, client: str) -> None:
        self.clients.discard(client)
        if self.handoffs is not None:
            self.handoffs.client_left(client)
        if self.placement is not None:
            self.placement.client_left(client)
        # What its tasks printed was for it alone: Dask would keep the topic for ever.
        dx.scheduler_forget_topic(scheduler, OUTPUT_TOPIC_PREFIX + client)
        for key in [k for k, clients in self.early_wants.items() if client in clients]:
            clients = self.early_wants[key]
            clients.discard(client)
            if not clients:
                del self.early_wants[key]
                waiting = self.early_by_task.get(task_of_yield(key) or "")
                if waiting is not None:
                    waiting.discard(key)

    def _tell_lost(self, client: str, keys: list[Any], kind: str, why: str) -> None:
        if dx.scheduler_has_client(self.scheduler, client):
            msg = {"op": LOST_OP, "keys": keys, "kind": kind, "why": why}
            dx.scheduler_report(self.scheduler, client, msg)

    def on_result(self, worker: str, caller: str, key: Any, blob: bytes, **_: Any) -> None:
        """A small task result sent ahead of the task's completion: pass it to the caller."""
        try:
            if dx.scheduler_has_client(self.scheduler, caller):
                msg = {"op": RESULT_OP, "key": as_key(key), "blob": blob}
                dx.scheduler_send_to_client(self.scheduler, caller, msg, direct=True)
        except Exception:
            logger.exception("daskgen: failed to forward the result of %s", key)

    def on_cancel(
        self,
        client: str,
        keys: list,
        force: bool,
        recursive: bool,
        revoke: bool,
        reason: str,
        **_: Any,
    ) -> None:
        """Ray's ``cancel()`` (see ``_client.cancel``): Dask cancels what no worker is
        processing now (with ``force`` or ``revoke``, everything); the workers processing the
        rest interrupt the tasks they run, and what turns out not to have started is cancelled
        in Dask."""
        try:
            s = self.scheduler
            where: dict[str, list[Any]] = {}
            now = []
            for key in map(as_key, keys):
                worker = dx.scheduler_processing_on(s, key)
                if worker is not None:
                    where.setdefault(worker, []).append(key)
                if worker is None or force or revoke:
                    now.append(key)
            dx.scheduler_cancel(s, now, client, reason)
            for worker, assigned in where.items():
                asyncio.ensure_future(
                    self._interrupt(worker, assigned, client, force, recursive, revoke, reason)
                )
        except Exception:
            logger.exception("daskgen: failed to cancel %s", keys)

    async def _interrupt(
        self,
        worker: str,
        keys: list[Any],
        client: str,
        force: bool,
        recursive: bool,
        revoke: bool,
        reason: str,
    ) -> None:
        try:
            running = await dx.scheduler_run_on_worker(
                self.scheduler, worker, INTERRUPT, keys, force, recursive
            )
        except Exception:  # the worker is gone, and so is the task's thread
            logger.debug("daskgen: could not interrupt %s on %s", keys, worker, exc_info=True)
            return
        if not (force or revoke):
            # Assigned to the worker but not started there: they never run (one that starts
            # meanwhile stops at once, see _worker.interrupt.running).
            idle = [k for k, was in zip(keys, running, strict=True) if not was]
            dx.scheduler_cancel(self.scheduler, idle, client, reason)

    # -- retries after a worker death -----------------------------------------------------------

    def update_graph(self, scheduler: Any, *, annotations: Any = None, **kwargs: Any) -> None:
        """Give each task Ray's ``max_retries`` for worker deaths, through Dask's own counter,
        and make calls fire-and-forget (Dask's own mechanism) as their graph arrives.

        Dask re-runs a task whose worker died until it has lost ``allowed-failures`` workers
        (then ``KilledWorker``, which ``get`` raises as ``WorkerCrashedError``); starting the
        task's count higher or lower makes that limit the task's own.
        """
        annotations = annotations or {}
        if self.unknown_wants:  # refs taken before their task came (see on_desire)
            for key in map(as_key, kwargs.get("keys") or ()):
                for client in self.unknown_wants.pop(key, ()):
                    dx.scheduler_desire(self.scheduler, [key], client)
        if self.handoffs is not None and self.handoffs.parked:
            self.handoffs.arrived(kwargs.get("keys") or ())  # a stream passed before it came
        ours = [
            as_key(k)
            for name in (MAX_RETRIES_ANNOTATION, FIRE_AND_FORGET_ANNOTATION)
            for k in annotations.get(name) or ()
        ]
        for key, actor in (annotations.get(ACTOR_ANNOTATION) or {}).items():
            self.actor_keys[as_key(key)] = (actor["actor"], bool(actor.get("detached")))
            if actor.get("max_restarts"):
                self.restartable[actor["actor"]] = [as_key(key), actor["max_restarts"]]
        if ours:
            self.tasks.update(ours)
            if self.lacking:
                self._keep_off_lacking_workers(ours, kwargs.get("client"))
        try:
            for key, max_retries in (annotations.get(MAX_RETRIES_ANNOTATION) or {}).items():
                dx.scheduler_allow_worker_failures(scheduler, as_key(key), max_retries)
        except Exception:
            logger.exception("daskgen: failed to apply max_retries")
        try:
            keep = annotations.get(FIRE_AND_FORGET_ANNOTATION)
            if keep:
                # Before the graph's transitions run: the task cannot have finished yet.
                keys = [as_key(k) for k in keep]
                dx.scheduler_fire_and_forget(scheduler, keys)
                self.fire_and_forget.update(keys)
        except Exception:
            logger.exception("daskgen: failed to keep calls running")
        placements = annotations.get(PLACEMENT_ANNOTATION)
        if placements and self.placement is not None:
            try:  # after fire-and-forget: a task of a removed group is cancelled for everyone
                self.placement.update_graph(placements, annotations.get(ACTOR_ANNOTATION) or {})
            except Exception:
                logger.exception("daskgen: failed to place tasks in placement groups")

    # -- workers that cannot run daskgen ------------------------------------------------------

    def add_worker(self, scheduler: Any, worker: str) -> None:
        """A worker joined: it gets no task until daskgen knows whether it can run daskgen's
        (one without daskgen would die on its first daskgen task). The scheduler holds it
        paused, as Dask holds a worker short of memory, while it is asked (it cannot answer
        before its registration, which waits for this hook, is done)."""
        if self.lost is not None:
            self.lost.worker_joined(worker)
        if dx.scheduler_hold_worker(scheduler, worker):
            self.probing.add(worker)
            asyncio.ensure_future(self._probe(worker))

    async def _probe(self, worker: str) -> None:
        s = self.scheduler
        for _attempt in range(PROBE_TRIES):
            try:
                has = await asyncio.wait_for(
                    dx.scheduler_run_on_worker(s, worker, dx.daskgen_probe()), PROBE_S
                )
                break
            except Exception as exc:  # no answer: asked again (a busy host), then not trusted
                has = exc
                if not dx.scheduler_has_worker(s, worker):
                    break
        try:
            if has != VERSION and dx.scheduler_has_worker(s, worker):
                what = "no daskgen" if has is None else f"daskgen {has!r}"
                self.lacking[worker] = what
                logger.warning(
                    "daskgen: worker %s has %s (daskgen %s is needed): daskgen's tasks stay off "
                    "it. Run `pip install daskgen==%s` in its environment and restart it.",
                    worker,
                    what,
                    VERSION,
                    VERSION,
                )
                # Every task of daskgen's not ended, running ones too: one whose worker dies
                # is placed again at once, before remove_worker below can restrict it.
                self._keep_off_lacking_workers(list(self.tasks), None)
        finally:
            self.probing.discard(worker)
            dx.scheduler_release_worker(s, worker)  # tasks (daskgen's, if it can) go there now
            if self.placement is not None and worker not in self.lacking:
                self.placement.worker_joined()  # pending placement groups may fit now
            if self.waiting is not None and worker not in self.lacking:
                self.waiting.look()  # tasks waiting on busy workers may move to it
            if self.to_restart and worker not in self.lacking:
                for actor, reason in list(self.to_restart.items()):
                    entry = self.restartable.get(actor)
                    del self.to_restart[actor]
                    if entry is not None and dx.scheduler_key_state(s, entry[0]):
                        self._restart_on(actor, entry, worker, reason)

    def _keep_off_lacking_workers(self, keys: list[Any], client: str | None) -> None:
        """Restrict daskgen's tasks ``keys`` to the workers that have daskgen; tell the caller
        at once if none has (rather than leave its tasks waiting for ever)."""
        s = self.scheduler
        if self.placement is not None:  # placed on workers that have daskgen already
            keys = [k for k in keys if not self.placement.held(k)]
        able = [w for w in dx.scheduler_workers(s) if w not in self.lacking]
        keys = dx.scheduler_restrict(s, keys, able) if able else keys
        if not keys:
            return
        lacking = ", ".join(f"{w} has {what}" for w, what in sorted(self.lacking.items()))
        where = (
            "it may run only on workers that cannot run daskgen's tasks"
            if able
            else "no worker of the cluster can run daskgen's tasks"
        )
        why = (
            f"The task cannot run: {where} ({lacking}). Run `pip install daskgen=={VERSION}` "
            "on those workers and restart them."
        )
        by_client = dx.scheduler_wanted_by(s, keys) if client is None else {client: keys}
        for each, wanted in by_client.items():
            # The reason reaches the caller with the cancel: get raises WorkerCrashedError(why).
            dx.scheduler_cancel(s, wanted, each, NO_WORKER_REASON + why)

    # -- actors ---------------------------------------------------------------------------------

    def on_actor(
        self, worker: str, actor: str, alive: bool, reason: str | None = None, **_: Any
    ) -> None:
        try:
            if alive:
                self.actors.setdefault(worker, set()).add(actor)
            else:
                self.actors.get(worker, set()).discard(actor)
                self._died(actor, reason or "it was killed with kill()")
        except Exception:
            logger.exception("daskgen: failed to record actor %s", actor)

    def _unreferenced(self, actor: str, detached: bool) -> None:
        """No handle of ``actor`` is left anywhere (its creation key was forgotten): its worker
        ends it once the calls already sent to it have run, as Ray ends an actor out of scope;
        a detached actor lives on until ``kill``."""
        self.restartable.pop(actor, None)
        if detached:
            return
        try:
            for worker, ids in self.actors.items():
                if actor in ids:
                    msg = {"op": ACTOR_END_OP, "actor": actor}
                    dx.scheduler_send_to_worker(self.scheduler, worker, msg)
        except Exception:
            logger.exception("daskgen: failed to end actor %s", actor)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        if self.lacking.pop(worker, None) is None and self.lacking:
            # A worker able to run daskgen's tasks left: those restricted to it go elsewhere,
            # or fail if no such worker is left.
            pending = [
                k for k in self.tasks if dx.scheduler_key_state(scheduler, k) != "processing"
            ]
            self._keep_off_lacking_workers(pending, None)
        lost = self.actors.pop(worker, set())
        # An actor whose worker died before the scheduler heard that its creation task ended
        # (its callers reach it directly, and may have seen it answer): its creation task was
        # placed there.
        lost |= {
            actor
            for key, (actor, _) in self.actor_keys.items()
            if dx.scheduler_key_restrictions(scheduler, key) == {worker}
            and dx.scheduler_key_state(scheduler, key) != "memory"
        }
        for actor in lost:
            self._lost_actor(actor, worker)
        for task in [t for t, w in self.expected.items() if w == worker]:
            del self.expected[task]
            if task in self.early_by_task:
                self._settle_early_wants(task, "erred")
        try:
            if self.placement is not None:
                self.placement.worker_left(worker)
            if self.lost is not None:
                self.lost.worker_left(worker)
        except Exception:
            logger.exception("daskgen: failed to handle the departure of %s", worker)

    def _lost_actor(self, actor: str, worker: str) -> None:
        """``actor``'s worker left: restart it elsewhere if it has restarts left (its creation
        task runs again, on the worker with the fewest actors: its constructor re-runs and its
        state is lost, as Ray restarts an actor); else it died."""
        reason = f"its worker {worker} left the cluster"
        entry = self.restartable.get(actor)
        s = self.scheduler
        if entry is not None and entry[1] != 0 and dx.scheduler_key_state(s, entry[0]):
            able = [w for w in dx.scheduler_workers(s) if self._able(w) and w != worker]
            if able:
                new = min(able, key=lambda w: (len(self.actors.get(w, ())), w))
                self._restart_on(actor, entry, new, reason)
            else:  # right after a crash: the next worker that can run daskgen's tasks
                self.to_restart[actor] = reason
            return
        self._died(actor, reason)

    def _restart_on(self, actor: str, entry: list[Any], worker: str, reason: str) -> None:
        """Run ``actor``'s creation task again on ``worker``; tell every client where it is."""
        s = self.scheduler
        dx.scheduler_restrict(s, [entry[0]], [worker], replace=True)
        if entry[1] > 0:
            entry[1] -= 1
        msg = {
            "op": ACTOR_DIED_OP,
            "actor": actor,
            "reason": reason,
            "moved_to": worker,
            "restarts_left": entry[1],
        }
        self._broadcast(msg)

    def _died(self, actor: str, reason: str) -> None:
        self.restartable.pop(actor, None)
        self.to_restart.pop(actor, None)
        self.named.forget(actor)
        msg = {"op": ACTOR_DIED_OP, "actor": actor, "reason": reason}
        self._broadcast(msg)

    def on_consumed(self, client: str, task: str, index: int, **_: Any) -> None:
        try:
            if index >= NO_CONSUMER_INDEX and self.handoffs is not None:
                if self.handoffs.nobody_consumes(task, client):
                    return  # passed to another task: only its consumer may let it go
            worker = dx.scheduler_processing_on(self.scheduler, task)
            if worker is not None:
                dx.scheduler_send_to_worker(
                    self.scheduler, worker, {"op": CONSUMED_OP, "task": task, "index": index}
                )
        except Exception:
            logger.exception("daskgen: failed to forward consumption of %s", task)
