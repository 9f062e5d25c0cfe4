"""What a person reads when a task or an actor's method fails: the user's own file, line and
source line in the remote traceback (not a placeholder), and none of daskgen's frames, on
both backends."""

from __future__ import annotations

import pytest

HANG = 120


def test_a_tasks_traceback_shows_the_users_file_and_line(ray):
    @ray.remote
    def fails():
        raise ValueError("bad value here")

    with pytest.raises(ValueError) as info:
        ray.get(fails.remote(), timeout=HANG)
    text = str(info.value)
    assert __file__ in text and 'raise ValueError("bad value here")' in text
    assert "<dynamic-code>" not in text and "daskgen/_worker" not in text


def test_an_actor_methods_traceback_shows_the_users_file_and_line(ray):
    @ray.remote
    class Failing:
        def method(self):
            raise KeyError("missing key here")

    with pytest.raises(KeyError) as info:
        ray.get(Failing.remote().method.remote(), timeout=HANG)
    text = str(info.value)
    assert __file__ in text and 'raise KeyError("missing key here")' in text
    assert "<dynamic-code>" not in text and "daskgen/_worker" not in text
