"""Ray names and checks that scripts reach for before doing any work: ``ray.actor`` and
``ray.remote_function`` (type hints, ``isinstance``), and Ray's ``TypeError`` at ``.remote()``
for arguments the function, constructor or method cannot take."""

from __future__ import annotations

import pytest
from realcluster import HANG


def _pair(ray):
    @ray.remote
    def add(a, b):
        return a + b

    @ray.remote
    class Box:
        def __init__(self, x):
            self.x = x

        def plus(self, y):
            return self.x + y

        @staticmethod
        def twice(y):
            return 2 * y

    return add, Box


def test_actor_and_remote_function_modules_name_the_classes(ray):
    add, Box = _pair(ray)
    box = Box.remote(1)
    assert isinstance(add, ray.remote_function.RemoteFunction)
    assert isinstance(Box, ray.actor.ActorClass)
    assert isinstance(box, ray.actor.ActorHandle)
    assert isinstance(box.plus, ray.actor.ActorMethod)

    def annotated(handle: ray.actor.ActorHandle) -> int:
        return ray.get(handle.plus.remote(2), timeout=HANG)

    assert annotated(box) == 3


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda add, Box: add.remote(1, 2, 3), "too many positional arguments"),
        (lambda add, Box: add.remote(1), "missing a required argument: 'b'"),
        (lambda add, Box: add.remote(1, c=2), "missing a required argument: 'b'"),
        (lambda add, Box: Box.remote(), "missing a required argument: 'x'"),
        (lambda add, Box: Box.remote(1).plus.remote(1, 2), "too many positional arguments"),
    ],
    ids=["too-many", "missing", "unknown-keyword", "constructor", "method"],
)
def test_arguments_a_call_cannot_take_raise_type_error_at_remote(ray, call, message):
    add, Box = _pair(ray)
    with pytest.raises(TypeError, match=message):
        call(add, Box)


def test_calls_with_the_right_arguments_still_work(ray):
    add, Box = _pair(ray)
    box = Box.remote(x=1)
    assert ray.get(add.remote(1, b=2), timeout=HANG) == 3
    assert ray.get([box.plus.remote(y=1), box.twice.remote(4)], timeout=HANG) == [2, 8]
