"""Packing a call's arguments (in the caller's process): pickled once, here, so that refs
nested in them travel as refs (Ray's semantics; Dask would resolve a future nested in a list).
"""

from __future__ import annotations

import functools
import pickle
from typing import Any

import cloudpickle

from .. import _buffers
from .._objects.handoff import AlreadyPassedError, unpass
from .._objects.refs import ObjectRef, capture_refs
from .._protocol import Dep, Packed


def pack_args(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out_of_band: bool = False
) -> tuple[Any, list[ObjectRef], list[ObjectRef]]:
    """Pickle the arguments once, here, so refs nested in them travel as refs: bytes, or None
    for no arguments.

    Top-level refs become Dask dependencies (the task receives their values); every ref met
    while pickling is returned so the caller can keep it alive while the task may use it.

    ``out_of_band``: large buffers (NumPy arrays' memory, from :data:`OUT_OF_BAND_BUFFER`
    bytes) are left out of the pickle, and returned with it as a :class:`Packed`: pickled in
    band, a 10 MB array took ~9 ms here (the pickle grows by copies). They are the caller's
    own memory, not copied: the caller sends them at once or takes a :func:`snapshot` first.
    """
    deps: list[ObjectRef] = []

    def top(v: Any) -> Any:
        if isinstance(v, ObjectRef):
            deps.append(v)
            return Dep(len(deps) - 1)
        return v

    if not args and not kwargs:
        return None, deps, []
    a = [top(v) for v in args]
    kw = {k: top(v) for k, v in kwargs.items()}
    # Top-level refs are lent too: a dynamic generator's ref owns its yields, and the task
    # receiving it must find them even if the caller dropped its own ref right away.
    if _plain_data(a) and _plain_data(kw):
        return pickle.dumps((a, kw), protocol=5), deps, list(deps)
    buffers: list[Any] = []
    callback = functools.partial(_take_large, buffers) if out_of_band else None
    failure: Exception | None = None
    with capture_refs() as lent:
        try:
            packed = cloudpickle.dumps((a, kw), protocol=5, buffer_callback=callback)
        except Exception as exc:
            failure = exc
    if failure is not None:
        unpass(lent)  # no call: the streaming generators in the arguments stay the caller's
        if isinstance(failure, AlreadyPassedError):
            raise failure
        raise TypeError(_unpicklable(name, args, kwargs, failure)) from failure
    return (Packed(packed, buffers) if buffers else packed), deps, [*deps, *lent]


OUT_OF_BAND_BUFFER = 64 << 10  # bytes: a buffer from this size is copied out of the pickle


def _take_large(buffers: list[Any], buffer: pickle.PickleBuffer) -> bool:
    """``buffer_callback`` of ``pack_args``: a large contiguous buffer goes to ``buffers``
    (False: out of band), not copied; any other stays in the pickle (True)."""
    try:
        raw = buffer.raw()
    except BufferError:  # not contiguous
        return True
    if raw.nbytes < OUT_OF_BAND_BUFFER:
        return True
    buffers.append(raw)
    return False


def snapshot(packed: Packed) -> Packed:
    """``packed`` with a copy of each buffer (``pack_args`` leaves them the caller's memory):
    for arguments that wait before they are sent, which the caller may change meanwhile."""
    return Packed(packed.blob, [_buffers.copy_of(b) for b in packed.buffers])


_PLAIN_SCALARS = (int, float, str, bytes, bool, type(None), complex, Dep)


def _plain_data(value: Any, depth: int = 0) -> bool:
    """True for builtin scalars and small containers of them: the standard pickle is then
    exact and ~10x cheaper than cloudpickle (which handles functions, classes and refs)."""
    if isinstance(value, _PLAIN_SCALARS):
        return type(value) in _PLAIN_SCALARS
    if depth > 2 or type(value) not in (list, tuple, dict):
        return False
    items = value.items() if type(value) is dict else enumerate(value)
    if len(value) > 32:
        return False
    return all(_plain_data(k, depth + 1) and _plain_data(v, depth + 1) for k, v in items)


def _unpicklable(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> str:
    labels = [(f"argument {i}", v) for i, v in enumerate(args)]
    labels += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in labels:
        if not _pickles(value):
            return (
                f"Could not serialize {label} ({type(value).__name__}) of {name}.remote(): {exc}. "
                "Arguments are pickled to reach the worker."
            )
    return f"Could not serialize the arguments of {name}.remote(): {exc}"


def _pickles(value: Any) -> bool:
    """Whether ``value`` pickles as an argument (a streaming generator in it stays the caller's)."""
    with capture_refs() as lent:
        try:
            cloudpickle.dumps(value)
        except Exception:
            return False
        finally:
            unpass(lent)
    return True
