"""``python -m daskgen script.py [args...]`` (or the ``daskgen`` command): run a script written
for Ray, unchanged, on daskgen.

For that run, ``import ray`` and Ray's modules a script names (``ray.util``, ``ray.util.queue``,
``ray.exceptions``, ``ray.actor``, ``ray.remote_function``) are daskgen's: the script runs as
``__main__`` with ``sys.argv`` set to the script and its arguments, as ``python script.py``
would run it. Nothing is installed or changed outside this process (an installed Ray is left
alone: this run simply does not import it).
"""

from __future__ import annotations

import runpy
import sys

USAGE = "usage: python -m daskgen script.py [args...]  (runs a Ray script on daskgen)"


def alias_ray() -> None:
    """Make ``import ray`` (and its submodules daskgen has) give daskgen's, in this process."""
    import daskgen
    import daskgen.actor
    import daskgen.exceptions
    import daskgen.remote_function
    import daskgen.util
    import daskgen.util.queue

    modules = {
        "ray": daskgen,
        "ray.actor": daskgen.actor,
        "ray.exceptions": daskgen.exceptions,
        "ray.remote_function": daskgen.remote_function,
        "ray.util": daskgen.util,
        "ray.util.queue": daskgen.util.queue,
    }
    sys.modules.update(modules)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not args else sys.stdout)
        return 0 if args else 2
    alias_ray()
    sys.argv = list(args)
    sys.path.insert(0, _directory_of(args[0]))  # as ``python script.py`` does
    runpy.run_path(args[0], run_name="__main__")
    return 0


def _directory_of(path: str) -> str:
    import os

    return os.path.dirname(os.path.abspath(path))


def cli() -> None:
    """The ``daskgen`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
