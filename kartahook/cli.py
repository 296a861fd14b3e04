"""The ``kartahook`` command line. Each subcommand lives in its own module under
``kartahook.commands`` and is imported only when it runs, so ``kartahook --help`` stays fast.

A command module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("kartahook.commands.serve", "the ingestion and admin API (uvicorn)"),
    "worker": ("kartahook.commands.worker", "an arq worker"),
    "sandbox": ("kartahook.commands.sandbox", "the KartaPay API simulator"),
    "demo-subscriber": ("kartahook.commands.demo_subscriber", "a demo subscriber"),
    "run": ("kartahook.commands.run", "everything on one machine"),
    "demo": ("kartahook.commands.demo", "drive demo payments through the sandbox"),
    "subscribers": ("kartahook.commands.subscribers", "manage subscribers"),
    "dlq": ("kartahook.commands.dlq", "dead letters: list, show, replay"),
    "status": ("kartahook.commands.status", "backlog, dead letters and subscriber health"),
    "config": ("kartahook.commands.config", "check configuration files"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kartahook", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args._module.run(args))


if __name__ == "__main__":
    sys.exit(main())
