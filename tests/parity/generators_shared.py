"""A generator task the generator behaviour tests share (importable by them, not by workers).

The task and the user's exception class are made inside a function, so that they pickle by
value: Ray's workers cannot import test modules.
"""

from __future__ import annotations

from typing import Any


def counting_generator(ray: Any, **options: Any) -> tuple[Any, type[Exception]]:
    """A remote generator yielding 0, 10, 20, ... and the exception class it raises at
    ``fail_at``; ``options`` go to ``@ray.remote``."""

    class GeneratorBoom(Exception):
        pass

    def count(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise GeneratorBoom(f"boom at {i}")
            yield i * 10

    # Ray rejects a bare @ray.remote() with empty parentheses
    return (ray.remote(**options)(count) if options else ray.remote(count)), GeneratorBoom
