"""The ``fieldcraft`` command line: ``fieldcraft <verb> <task> ...``.

Verbs: ``fit``, ``render``, ``eval``, ``export``, ``encode``, ``sample``, ``extract``. Top-level commands:
``compress``, ``decompress`` (the neural image codec), ``view`` (the viewer in the browser). Each
task's sub-commands live in their own module under :mod:`fieldcraft.commands` and register
themselves through ``register(verbs)``; registering imports no PyTorch, and a command that does not need it sets ``uses_torch=False``
as a parser default.
Bad input raises :class:`~fieldcraft.errors.FieldcraftError`, printed as one line
(``fieldcraft: error: ...``) with exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fieldcraft.runtime import configure_cpu_defaults

VERBS = {
    "fit": "fit a field to a signal",
    "render": "query a fitted field (images, views, video)",
    "eval": "evaluate a fitted field or compare outputs",
    "export": "export a fitted field (meshes, ...)",
    "encode": "turn signals into latents of a fitted model (functa)",
    "sample": "draw new signals from a fitted generative model (functa)",
    "extract": "compute a task's inputs from a dataset (feature maps)",
}
# one module per task under fieldcraft.commands; each defines register(verbs)
COMMAND_MODULES = ("image", "images", "nerf", "shapes", "ct", "functa", "codec", "lightfield", "view", "features")
# top-level commands that are not ``<verb> <task>`` (``fieldcraft compress IMG``): a module adds
# them through ``verbs[TOP_LEVEL]``
TOP_LEVEL = ""


def build_parser() -> argparse.ArgumentParser:
    from fieldcraft import __version__

    parser = argparse.ArgumentParser(prog="fieldcraft", allow_abbrev=False,
                                     description="Neural fields for images, radiance fields, shapes and CT.")
    parser.add_argument("--version", action="version", version=f"fieldcraft {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    verbs = {}
    for verb, help_text in VERBS.items():
        p = sub.add_parser(verb, help=help_text, allow_abbrev=False)
        verbs[verb] = _NoAbbrev(p.add_subparsers(dest="task", metavar="TASK", required=True))
    verbs[TOP_LEVEL] = _NoAbbrev(sub)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"fieldcraft.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fieldcraft.commands.{name}":
                continue  # task not present in this build
            raise
        module.register(verbs)
    return parser


class _NoAbbrev:
    """A sub-parsers action whose parsers take no abbreviated options (so the options a user gave
    can be named exactly: ``--resume`` reports the settings it kept)."""

    def __init__(self, action: argparse._SubParsersAction) -> None:
        self._action = action

    def add_parser(self, name: str, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        return self._action.add_parser(name, **kwargs)


def main(argv: list[str] | None = None) -> int:
    configure_cpu_defaults()
    from fieldcraft.commands.common import given_options
    from fieldcraft.errors import FieldcraftError
    from fieldcraft.runtime import set_threads

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.given = given_options(argv)
    if getattr(args, "uses_torch", True):  # torch-free commands (export mesh) skip importing it
        set_threads()
    try:
        _start_distributed(args)
        result = args.func(args)
    except FieldcraftError as exc:
        if args.debug:
            raise
        print(f"fieldcraft: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the system refused a read or a write (disk full, permissions): one line too
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"fieldcraft: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fieldcraft: interrupted", file=sys.stderr)
        return 130
    finally:
        if "fieldcraft.train.distributed" in sys.modules:
            sys.modules["fieldcraft.train.distributed"].shutdown()
    return int(result or 0)


def _start_distributed(args: argparse.Namespace) -> None:
    """Under torchrun (``WORLD_SIZE`` > 1): join the process group of a ``fit`` command
    (:mod:`fieldcraft.train.distributed`); other verbs refuse. Without torchrun: nothing."""
    import os

    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return
    from fieldcraft.errors import FieldcraftError
    from fieldcraft.runtime import default_device
    from fieldcraft.train import distributed

    if not distributed.launched():
        return
    if args.verb != "fit":
        raise FieldcraftError(f"{args.verb} {getattr(args, 'task', '')}".strip() + ": only fit commands run as several "
                              "ranks (torchrun); "
                              "run it as one process")
    args.device = distributed.init(getattr(args, "device", None) or default_device())


def run() -> None:
    """Console entry point: :func:`main`, then a fast exit.

    Everything a command writes is closed (and renamed into place) before it returns, so after
    flushing the standard streams the process ends with ``os._exit``, skipping the interpreter's
    teardown of torch, numba and friends (about 0.3 s, which matters for one-shot commands such as
    ``export mesh``). Library callers use :func:`main`, which returns normally.
    """
    import os

    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
