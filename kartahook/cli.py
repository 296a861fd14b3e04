"""The ``kartahook`` command line. Each subcommand lives in its own module under
``kartahook.commands`` and is imported only when it runs, so ``kartahook --help`` stays fast.

A command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. :func:`main` is
the one error boundary: whatever a command raises ends as one line on stderr and an exit code
(``kartahook.errors``), never a traceback unless ``KARTAHOOK_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from kartahook.errors import DEBUG_ENV, DEBUG_HINT, INTERRUPTED, RUNTIME, UsageError

DESCRIPTION = """\
kartahook receives payment-provider webhooks, stores them in Redis and delivers signed payment
events to subscribers. Run `kartahook COMMAND --help` for a command's options."""

EPILOG = """\
configuration comes from KARTAHOOK_* environment variables (see the README).
exit codes: 0 ok; 1 failed while running (for `status`: something needs attention);
2 bad invocation or configuration; 130 interrupted. Errors are one line on stderr;
set KARTAHOOK_DEBUG=1 to see the traceback of an unexpected error."""


# Each command: (module, the one-line help of the command list). kartahook.commands.run
# reads the module names.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("kartahook.commands.serve", "run the ingestion and admin HTTP API"),
    "worker": ("kartahook.commands.worker", "run a worker that processes events and delivers them"),
    "sandbox": ("kartahook.commands.sandbox", "run the KartaPay API simulator"),
    "demo-subscriber": (
        "kartahook.commands.demo_subscriber",
        "run a demo subscriber that verifies and lists deliveries",
    ),
    "run": ("kartahook.commands.run", "run everything on one machine and drive demo payments"),
    "demo": ("kartahook.commands.demo", "drive demo payments through a running stack"),
    "subscribers": ("kartahook.commands.subscribers", "list, add, change and remove subscribers"),
    "dlq": ("kartahook.commands.dlq", "list, show and replay dead letters"),
    "status": (
        "kartahook.commands.status",
        "show backlog, dead letters, subscriber health and workers",
    ),
    "config": ("kartahook.commands.config", "check the configuration files"),
    "listen": (
        "kartahook.commands.listen",
        "a temporary subscriber that prints and forwards each delivery",
    ),
    "trigger": (
        "kartahook.commands.trigger",
        "drive one sandbox payment to completed, failed or canceled",
    ),
    "logs": ("kartahook.commands.logs", "show the logs of `kartahook run` readably"),
}

# What `kartahook COMMAND --help` says about the command.
DESCRIPTIONS: dict[str, str] = {
    "serve": (
        "Run the HTTP API that receives webhooks (POST /webhooks/SOURCE), the /admin API and "
        "the health and metrics endpoints. Needs KARTAHOOK_REDIS_URL; SIGTERM drains requests "
        "in flight before exiting."
    ),
    "worker": (
        "Run one worker: it reads each stored webhook's payment from the KartaPay API and "
        "delivers signed events to the subscribers. Needs KARTAHOOK_REDIS_URL; SIGTERM lets "
        "the jobs in flight finish (KARTAHOOK_WORKER_DRAIN_S)."
    ),
    "sandbox": (
        "Run a KartaPay API simulator for tests and demos: it answers the payment API and "
        "sends signed webhooks for each lifecycle step. Its Bearer token is "
        "KARTAHOOK_KARTAPAY_TOKEN."
    ),
    "demo-subscriber": (
        "Run a subscriber for demos: it verifies each delivery's signature, drops duplicates "
        "and lists what arrived at GET /received."
    ),
    "run": (
        "Start Redis (when KARTAHOOK_REDIS_URL is unset), a demo subscriber, the API, a worker "
        "and the sandbox on this machine, then drive a few demo payments and show their "
        "deliveries. Ctrl-C stops everything."
    ),
    "demo": (
        "Create demo payments in the sandbox of a running stack (the one `kartahook run` "
        "started, by default) and show the deliveries the demo subscriber receives."
    ),
    "subscribers": (
        "Manage subscribers through the admin API of a running `kartahook serve` "
        "(--admin-url, --token). The options may come before or after the action."
    ),
    "dlq": (
        "List, show and replay dead letters through the admin API of a running `kartahook "
        "serve`: deliveries that gave up (--kind deliveries, the default) or events whose "
        "payment could not be read (--kind events). The options may come before or after "
        "the action."
    ),
    "status": (
        "Read the backlog, dead letters, subscriber health and the workers' heartbeat from "
        "Redis. Exits 0 when healthy, 1 when something needs attention, 2 when Redis cannot "
        "be read."
    ),
    "config": (
        "Check the sources and subscribers files without starting anything; prints one line "
        "per problem and exits 1 when there is any."
    ),
    "listen": (
        "Register a temporary subscriber through the admin API, receive its deliveries on this "
        "machine, print each one (its signature verified) and forward it, same body and "
        "webhook-* headers, to --forward-to; answer kartahook with the forward's status. "
        "Ctrl-C or SIGTERM removes the subscriber. Against `make run` it needs no options "
        "but --forward-to (the admin URL and token come from var/run.json)."
    ),
    "trigger": (
        "Create one payment in the sandbox and drive it to OUTCOME (through --source's "
        "provider, default STR), print its id and follow it until kartahook has recorded that "
        "status (read from Redis). Against `make run` the sandbox and Redis come from "
        "var/run.json."
    ),
    "logs": (
        "Show var/log/*.log (the structlog JSON lines of every process `kartahook run` "
        "started) one readable line each: time, component, level, event, key fields. "
        "--follow keeps printing new lines until Ctrl-C."
    ),
}


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors raise :class:`UsageError` (one line, exit 2) in place
    of printing the usage and exiting; subcommand parsers get this class too."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kartahook")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="kartahook",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"kartahook {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=DESCRIPTIONS[name])
        module = importlib.import_module(module_name)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_module=module)
    return parser


def _command_of(argv: Sequence[str]) -> str:
    """The subcommand named in ``argv`` (for the error prefix), or ''."""
    for arg in argv:
        if arg in COMMANDS:
            return arg
        if not arg.startswith("-"):
            return ""
    return ""


def _report(command: str, message: str) -> None:
    prefix = f"kartahook {command}" if command else "kartahook"
    sys.stderr.write(f"{prefix}: {message}\n")
    sys.stderr.flush()


def _fail(exc: BaseException, command: str, args: argparse.Namespace | None) -> int:
    """Report ``exc`` as one scrubbed line; return the exit code."""
    from kartahook.errors import redact, scrub, secret_values

    extra = [getattr(args, name, None) for name in ("token", "secret", "webhook_secret")]
    secrets = secret_values(v for v in extra if isinstance(v, str))
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if debug:  # the traceback, redacted like the line
        sys.stderr.write(redact("".join(traceback.format_exception(exc)), secrets))
    try:
        from kartahook.errors import describe

        code, message, expected = describe(exc)
    except Exception:
        code, message, expected = RUNTIME, f"unexpected error: {type(exc).__name__}", False
    line = scrub(message, secrets)
    if not expected and not debug:
        line = f"{line} ({DEBUG_HINT})"
    _report(command, line)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(arguments)
    args: argparse.Namespace | None = None
    try:
        parser = build_parser()
        args, extras = parser.parse_known_args(arguments)
        if extras:  # what parse_args refuses, with the command's help to look at
            raise UsageError(
                f"unrecognized arguments: {' '.join(extras)} "
                f"(see `kartahook {args.command} --help`)"
            )
        return int(args._module.run(args))
    except KeyboardInterrupt:
        return INTERRUPTED
    except SystemExit as exc:  # --help/--version (0), or a command's own exit
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        message = str(exc.code)
        if command and message.startswith(f"{command}: "):  # "demo: ..." → "kartahook demo: ..."
            message = message[len(command) + 2 :]
        return _fail(UsageError(message), command, args)
    except Exception as exc:
        return _fail(exc, command, args)


if __name__ == "__main__":
    sys.exit(main())
