"""The command line through click's CliRunner, for the tests: run it, and read its one error line."""
from click.testing import CliRunner

from compress.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def error_line(result) -> str:
    """Bad input gives exactly one line starting with Error."""
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]
