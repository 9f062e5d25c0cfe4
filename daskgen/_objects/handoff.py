"""Passing a streaming generator to another task or actor (beyond Ray, which raises
``TypeError``; its issues 46934 and 52765): the clients' half. Runs in every process that holds
generators; ``_scheduler.handoff`` is the scheduler's half and has the messages.

An ``ObjectRefGenerator`` pickled into a call's arguments (``.remote()`` pickles them inside
``refs.capture_refs``; top level or nested) is *passed*: this process may no longer iterate it
(``RuntimeError``) nor pass it again (``ValueError``). The yields it has not handed out become
the consumer's, from the index it had reached (``start``); the refs it handed out stay valid.

1. Here, pickling: a :class:`Handoff` holds this process's state of the generator call and its
   claim, so that nothing is released before the consumer has taken over. A ref of the
   generator's task carries it among the call's lent refs, so it lives until the call has run.
2. There, unpickling the arguments (in the task or actor method, before the user's code runs):
   the consumer's client sends ``daskgen-handoff`` and waits (at most ``HANDOFF_TIMEOUT_S``)
   for the scheduler's ``daskgen-takeover``, on whose receipt (on the client's loop) a new
   ``GenState`` takes the yields the cluster holds from ``start`` on; every later one is routed
   to it. The wait orders the handoff before anything the call does (its end, a ref it passes
   on, passing the generator on again).
3. Here, ``daskgen-handed`` {taken: True}: the state drops its futures of those yields (the
   consumer wants them already) and is abandoned; nothing more comes here.

A call that ends without unpickling its arguments (cancelled before it ran, an argument
failed, its actor died) drops its lent refs, and with them the :class:`Handoff`: the handoff is
dropped through the scheduler (``daskgen-handoff-drop``), which answers ``daskgen-handed``
{taken: False} unless the consumer took it first; then the state is abandoned (its yields are
freed, a paused producer runs to its end).

A consumer that cannot take the stream (its task re-run after its worker died, or retried, so
that the same arguments are unpickled again; the generator task is gone) gets a generator whose
``next()`` returns one ref raising ``ObjectLostError`` with the reason, then ``StopIteration``:
what a stream that ends by a failure gives (SPEC 5). Never a hang, never a silently partial
stream: a stream cannot be replayed, its yields went to the first consumer. A generator
cancelled (``cancel(gen)``) before it was passed gives the consumer what it gives the caller:
one ref raising ``TaskCancelledError``, then ``StopIteration``.

When the state passed lives in the consumer's very process (a consumer passing the generator on
to a task on its own worker; a cluster of threads), the consumer's generator shares it and its
claim, and the scheduler only records the handoff.

Streams of direct actor calls (generator methods of actors) cannot be passed: their end, their
failures and their backpressure travel the caller's own connection to the actor
(``_client.actors``), which another process does not have. Passing one raises ``TypeError``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from distributed import Client

from .. import _dask_internals as dx
from .. import _runtime
from .._protocol import HANDOFF_DROP_OP, HANDOFF_OP, Key, as_key, new_token
from ..exceptions import ObjectLostError
from . import generators
from .generators import ObjectRefGenerator, cancelled_error
from .genstate import GenClaim, GenState
from .refs import ObjectRef, lend

logger = logging.getLogger("daskgen")

HANDOFF_TIMEOUT_S = 60.0  # s: bound on the scheduler's answer to a consumer taking a stream


class AlreadyPassedError(ValueError):
    """A streaming generator passed to a second call (or again after it was passed)."""


class Handoff:
    """A generator this process passed to a call, until the consumer has taken its stream or
    the call has ended without taking it (see the module's docstring)."""

    def __init__(self, gen: ObjectRefGenerator, token: str) -> None:
        self.gen: ObjectRefGenerator | None = gen
        self.state: GenState = gen._state
        self.claim: GenClaim | None = gen._claim  # nothing is abandoned while this lives
        self.token = token
        self.settled = False

    def settle(self) -> tuple[GenState, GenClaim | None]:
        """Mark it settled (taken, dropped or undone); what it held."""
        self.settled = True
        _pending.pop(self.token, None)
        claim, self.claim, self.gen = self.claim, None, None
        return self.state, claim

    def __del__(self) -> None:
        # The call it was passed to has ended (its lent refs are gone).
        if self.settled:
            return
        try:
            state, claim = self.settle()
            with _lock:
                _dropping[self.token] = (state, claim)
            msg = {
                "op": HANDOFF_DROP_OP,
                "task": state.task_key,
                "token": self.token,
                "backpressure": bool(state.backpressure),
            }
            _runtime.send(state.client, msg)
        except Exception:  # the client (or the interpreter) is closing: nothing left to free
            _dropping.pop(self.token, None)


_lock = threading.Lock()
# Handoffs made here and not settled, by token.
_pending: weakref.WeakValueDictionary[str, Handoff] = weakref.WeakValueDictionary()
# Handoffs whose call ended first: held until the scheduler says whether they were taken.
_dropping: dict[str, tuple[GenState, GenClaim | None]] = {}
# The token by which a state of this process got its stream (it passes it on from there).
_tokens: weakref.WeakKeyDictionary[GenState, str] = weakref.WeakKeyDictionary()
# States whose stream cannot move, and why (``fixed``).
_fixed: weakref.WeakKeyDictionary[GenState, str] = weakref.WeakKeyDictionary()


def fixed(state: GenState, why: str) -> None:
    """The stream of ``state`` cannot be passed to another task: passing it raises
    ``TypeError(why)``."""
    _fixed[state] = why


# -- passing (the process that holds the generator) --------------------------------------------


def _reduce(gen: ObjectRefGenerator) -> Any:
    """``ObjectRefGenerator.__reduce__``: pass ``gen`` to the call being packed."""
    st = gen._state
    why = _fixed.get(st)
    if why is not None:
        raise TypeError(why)
    if gen._passed:
        raise AlreadyPassedError(
            f"This ObjectRefGenerator (of {st.task_key}) was passed to a task or actor already: "
            "a stream has one consumer. Pass it to one call, and let that call pass it on (or "
            "pass the refs themselves)."
        )
    token = new_token()
    handoff = Handoff(gen, token)
    if not lend(ObjectRef(st.task, owner=handoff)):
        handoff.settle()
        generators._not_passable(gen)  # raises TypeError: not in .remote()
    gen._passed = True
    _pending[token] = handoff
    with st.cond:  # the client's loop adds yields
        seen = st.published.high() + 1
    args = (
        st.task_key,
        token,
        gen._index,
        seen,
        st.backpressure,
        st.client.id,
        _tokens.get(st),
        st.cancelled,
        gen._ended,
    )
    return _adopt, args


def unpass(lent: list[ObjectRef]) -> None:
    """The call whose arguments held ``lent`` is not made (its arguments failed to pickle):
    the generators passed in them stay this process's."""
    for ref in lent:
        handoff = ref._owner
        if isinstance(handoff, Handoff) and handoff.gen is not None:
            handoff.gen._passed = False
            handoff.settle()


def on_handed(client: Client) -> Callable[..., None]:
    """The client's handler for ``daskgen-handed`` (on its loop): a generator passed from here
    was taken by its consumer, or dropped; either way nothing here holds its yields any more."""

    def handler(task: Key, token: str, taken: bool = True, **_: Any) -> None:
        handoff = _pending.get(token)
        if handoff is not None:
            state: GenState | None = handoff.settle()[0]
        else:
            with _lock:
                state = _dropping.pop(token, (None, None))[0]
        if state is not None:
            # The untaken yields are the consumer's (it wants them already), or nobody's.
            state.abandon()

    return handler


# -- taking over (the consumer's process) -----------------------------------------------------


class _Waiter:
    """A consumer waiting for the scheduler's answer to its ``daskgen-handoff``."""

    def __init__(self, backpressure: int | None) -> None:
        self.backpressure = backpressure
        self.event = threading.Event()
        self.error: str | None = None
        self.state: GenState | None = None  # the consumer's state (made on the client's loop)


_incoming: dict[str, _Waiter] = {}  # by handoff token


def _adopt(
    task: str,
    token: str,
    start: int,
    seen: int,
    backpressure: int | None,
    source: str,
    source_token: str | None,
    cancelled: bool,
    ended: bool,
) -> ObjectRefGenerator:
    """Unpickling a passed generator in the consumer: take its stream over (see the module's
    docstring); a generator of the yields from ``start`` on."""
    client = _runtime.client()
    if dx.on_loop_thread(client):
        raise RuntimeError(
            "A passed ObjectRefGenerator cannot be unpickled on the client's event loop: it "
            "waits there for the scheduler to hand it the stream."
        )
    if cancelled:  # cancel(gen) before it was passed: as there, one ref raising why
        return _unavailable(client, task, token, cancelled_error(task))
    local = _pending.get(token)  # passed from this very process
    waiter = _Waiter(backpressure)
    with _lock:
        _incoming[token] = waiter
    msg = {
        "op": HANDOFF_OP,
        "client": client.id,
        "task": task,
        "token": token,
        "start": start,
        "seen": seen,
        "source": source,
        "source_token": source_token,
        "backpressure": bool(backpressure),
        "local": local is not None,
    }
    _runtime.send(client, msg)
    if not waiter.event.wait(HANDOFF_TIMEOUT_S):
        with _lock:
            gave_up = _incoming.pop(token, None) is waiter
        if gave_up:
            waiter.error = (
                f"the scheduler did not answer within {HANDOFF_TIMEOUT_S:.0f} s when this "
                f"process asked for the stream of {task!r}"
            )
        else:  # the answer is being handled on the client's loop right now
            waiter.event.wait(HANDOFF_TIMEOUT_S)
    if waiter.error is not None:
        why = f"This process cannot consume the streaming generator passed to it: {waiter.error}."
        return _unavailable(client, task, token, ObjectLostError(why))
    if local is not None:
        state, claim = local.settle()
        _tokens[state] = token
        gen = ObjectRefGenerator(state, claim, start)
    else:
        assert waiter.state is not None
        _tokens[waiter.state] = token
        gen = ObjectRefGenerator(waiter.state, index=start)
    gen._ended = ended
    return gen


def on_takeover(client: Client) -> Callable[..., None]:
    """The client's handler for ``daskgen-takeover`` (on its loop): the scheduler's answer to a
    consumer here. Taken: a state for the stream, with the yields it holds from the handoff's
    index on, made before any later message about the stream is read."""

    def handler(
        task: Key,
        token: str,
        items: list | None = None,
        error: str | None = None,
        local: bool = False,
        **_: Any,
    ) -> None:
        task = as_key(task)
        with _lock:
            waiter = _incoming.pop(token, None)
        if waiter is None:  # the consumer gave up waiting: nobody here takes them
            if error is None and not local:
                keys = [as_key(key) for key, _ in items or ()]
                dx.client_release(client, [*keys, task])
            return
        try:
            if error is None and not local:
                state = GenState(client, task, "streaming", waiter.backpressure)
                state.attach(dx.light_future(task, client))
                for key, index in items or ():
                    state.on_yield(index, as_key(key), None, False)
                waiter.state = state
            waiter.error = error
        except Exception as exc:  # never leave the consumer waiting
            logger.exception("daskgen: failed to take over the stream of %s", task)
            waiter.error = f"taking it over failed: {exc!r}"
        finally:
            waiter.event.set()

    return handler


def _unavailable(client: Client, task: str, token: str, error: Exception) -> ObjectRefGenerator:
    """A generator for a stream this consumer cannot have: one ref raising ``error``, then the
    end."""
    key = f"{task}-unavailable-{token}"
    state = GenState(client, key, "streaming", None)
    state.attach(dx.erred_future(client, key, error))
    fixed(state, f"This ObjectRefGenerator cannot be passed on: {error}")
    return ObjectRefGenerator(state)


generators.reduce_for_call = _reduce
