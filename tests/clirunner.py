"""The command line through click's CliRunner, for the tests: run it, read its one error line; a small GLUE directory to run it on."""

from pathlib import Path

from click.testing import CliRunner

from compress.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def error_line(result) -> str:
    """Bad input gives exactly one line starting with Error."""
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


def small_mrpc(root: Path, rows: int = 16) -> Path:
    """A GLUE-layout directory under `root` whose MRPC train and dev splits are the same `rows` plain pairs; -> the directory."""
    glue = root / "glue" / "MRPC"
    glue.mkdir(parents=True)
    lines = "".join(f"{i % 2}\t{i}\t{i}\tsentence {i} .\tanother {i} .\n" for i in range(rows))
    for split in ("train", "dev"):
        (glue / f"{split}.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + lines)
    return glue.parent
