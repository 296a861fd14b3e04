"""``kartahook config check``: validate the configuration files without starting anything.

Checks the sources file (``KARTAHOOK_SOURCES_FILE`` or ``--sources``): YAML, ``${ENV}``
references set, known source types, every source's options valid (one line per source in
error, naming the field); and the subscribers file
(``KARTAHOOK_SUBSCRIBERS_FILE`` or ``--subscribers``): ids, URLs inside the allowlist, secrets.
Prints one line per problem (``kartahook config: …`` on stderr) and exits 1 when there is any.
Secrets are never printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

Check = Callable[[argparse.Namespace], list[str]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="validate the sources (and subscribers) files",
        description="Validate the sources file (YAML, ${ENV} references set, known source "
        "types, secrets that decode) and the subscribers file (ids, URLs inside the "
        "allowlist, secrets). Prints one line per problem; exits 1 when there is any.",
    )
    check.add_argument(
        "--sources", type=Path, metavar="FILE", help="sources file (default KARTAHOOK_SOURCES_FILE)"
    )
    check.add_argument(
        "--subscribers",
        type=Path,
        metavar="FILE",
        help="subscribers file (default KARTAHOOK_SUBSCRIBERS_FILE)",
    )


def check_sources(args: argparse.Namespace) -> list[str]:
    """Problems of the sources file, or [] (an 'ok' line is printed when it is valid)."""
    from service.api.ingest.sources.config import ConfigFileError, load_sources_config
    from service.api.ingest.sources.registry import source_problems
    from service.settings import Settings

    path: Path | None = args.sources or Settings().sources_file
    if path is None:
        return ["sources: no file given (set KARTAHOOK_SOURCES_FILE or pass --sources)"]
    try:
        config = load_sources_config(path)
    except ConfigFileError as exc:
        return [f"sources: {exc}"]
    if not config:
        return [f"sources: {path} defines no source"]
    problems = source_problems(config)  # every source checked, not only up to the first error
    if problems:
        return [f"sources: {problem}" for problem in problems]
    print(f"sources: {path}: ok ({', '.join(sorted(config))})")
    return []


def check_subscribers(args: argparse.Namespace) -> list[str]:
    """Problems of the subscribers file (URLs, allowlist, kartahook's own listeners, control
    characters, secrets, ids); none when not set."""
    import yaml

    from service.domain.subscribers import SubscriberError, load_subscribers_file
    from service.settings import Settings
    from service.store.subscribers import configured_targets

    settings = Settings()
    path: Path | None = args.subscribers or settings.subscribers_file
    if path is None:
        return []
    try:
        subscribers = load_subscribers_file(
            path, settings.subscriber_allowlist, forbidden=configured_targets(settings)
        )
    except SubscriberError as exc:
        return [f"subscribers: {exc.message}"]
    except (OSError, yaml.YAMLError) as exc:
        return [f"subscribers: {path}: {exc}"]
    print(f"subscribers: {path}: ok ({', '.join(s.id for s in subscribers) or 'none'})")
    return []


# Each check returns its problems.
CHECKS: list[Check] = [check_sources, check_subscribers]


def run(args: argparse.Namespace) -> int:
    problems = [problem for check in CHECKS for problem in check(args)]
    from kartahook.errors import scrub

    for problem in problems:  # one line each, even when a YAML parser's message has several
        print(f"kartahook config: {scrub(problem)}", file=sys.stderr)
    return 1 if problems else 0
