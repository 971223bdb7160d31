"""Print a benchmark's Markdown table and save it, with the rows as JSON and the exact command."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path


def write(results: str | Path, title: str, rows, table: str, command: str | None = None) -> None:
    """command: what measured the rows when it is not this process (a table rendered again from saved rows)."""
    print(table)
    res = Path(results)
    res.parent.mkdir(parents=True, exist_ok=True)
    res.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    res.with_suffix(".md").write_text(f"# {title}\n\n`{command or 'python ' + shlex.join(sys.argv)}`\n\n{table}\n")


def command_of(results: str | Path) -> str:
    """The command a results file was measured with, as its .md names it (to write its tables again from its JSON)."""
    md = Path(results).with_suffix(".md").read_text().splitlines()
    return next(ln.strip("`") for ln in md if ln.startswith("`python "))


def verdict(value: float, target: float, lower_is_better: bool = True) -> str:
    """'0.96 (missed by 0.16)' or '1.23 (met)' against a target ratio."""
    short = value - target if lower_is_better else target - value
    return f"{value:.2f}" + (f" (missed by {short:.2f})" if short > 0 else " (met)")
