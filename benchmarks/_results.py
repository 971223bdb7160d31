"""Print a benchmark's Markdown table and save it, with the rows as JSON and the exact command."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def write(results: str | Path, title: str, rows, table: str, command: str | None = None) -> None:
    """command: what measured the rows when it is not this process (a table rendered again from saved rows)."""
    print(table)
    res = Path(results)
    res.parent.mkdir(parents=True, exist_ok=True)
    res.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    res.with_suffix(".md").write_text(f"# {title}\n\n`{command or 'python ' + ' '.join(sys.argv)}`\n\n{table}\n")
