"""The package's shape: no import cycles between its modules, small modules, and the app-side readers stay light."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
MAX_FUNCTION = 60
PACKAGES = {"compress": ROOT / "compress", "compress.exporters": ROOT / "exporters", "compress.runtimes": ROOT / "runtimes"}


def modules() -> dict[str, Path]:
    return {f"{pkg}.{p.stem}" if p.stem != "__init__" else pkg: p for pkg, d in PACKAGES.items() for p in d.glob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """Every compress module this one imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("compress"):
            out |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
    return out & known


def test_no_import_cycles():
    mods = modules()
    graph = {m: imports(p, set(mods)) - {m, "compress"} for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, f"import cycle: {' -> '.join(path + [n])}"
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_modules_stay_small():
    big = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 500}
    assert not big, f"split these modules (one job each, <= ~500 lines): {big}"


def test_functions_stay_short():
    """Every function can be read at once (~60 lines, its docstring included)."""
    long = {}
    for m, p in modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION:
                long[f"{m}.{node.name}"] = n
    assert not long, f"split these functions (<= {MAX_FUNCTION} lines): {long}"


def test_pack_reader_needs_neither_torch_nor_transformers():
    code = (
        "import sys, compress; compress.Pack; assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
