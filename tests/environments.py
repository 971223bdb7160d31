"""Other Python environments for the tests that check what another install sees: an app with Optimum (which holds
transformers below 4.58, so it cannot share the command line's environment), the reader-only install, and ONNX Runtime's
OpenVINO build (onnxruntime-openvino, which replaces the onnxruntime module)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_TORCH = ROOT / ".ci" / "cpu-torch.txt"


def environment(name: str, *requirements: str, no_deps: tuple[str, ...] = ()) -> Path:
    """The python of `.venv-NAME` beside the tests, made on first use with exactly `requirements` installed (as an app that uses
    them would install them; torch, where they bring it, the CPU build of .ci/cpu-torch.txt), then `no_deps` without their
    dependencies (this package beside another build of onnxruntime). $COMPRESS_NAME_PYTHON overrides."""
    override = os.environ.get(f"COMPRESS_{name.upper()}_PYTHON")
    if override:
        return Path(override)
    where = ROOT / f".venv-{name}"
    python = where / "bin" / "python"
    stamp = where / "requirements.txt"
    wanted = "\n".join([*requirements, *(f"--no-deps {r}" for r in no_deps)])
    if not (python.is_file() and stamp.is_file() and stamp.read_text() == wanted):
        venv.create(where, with_pip=True, clear=True)
        for args in [list(requirements)] + ([["--no-deps", *no_deps]] if no_deps else []):
            r = subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(CPU_TORCH), *args], capture_output=True, text=True)
            assert r.returncode == 0, f"pip install {' '.join(args)} into {where} failed:\n{r.stderr[-3000:]}"
        stamp.write_text(wanted)
    return python


def run_in(python: Path, code: str, *args: str, timeout: int = 900) -> str:
    """Run `code` with another environment's python (nothing of this one on its path); its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run(
        [str(python), "-I", "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=tempfile.gettempdir()
    )
    assert r.returncode == 0, f"{python}: {r.stderr[-3000:]}"
    return r.stdout
