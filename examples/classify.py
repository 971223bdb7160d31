"""Use a `compress run` artifact in an app: only onnxruntime, tokenizers and numpy (no torch, no transformers).

python examples/classify.py runs/minilm-mrpc-4bit "The cat sat on the mat." "A cat was sitting on the mat."
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def verified(d: Path, name: str, manifest: dict) -> str:
    """The path of an artifact file whose SHA-256 is the one its manifest records (refuses an altered file)."""
    h = hashlib.sha256()
    with open(d / name, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != manifest["files"][name]["sha256"]:
        raise ValueError(f"{d / name}: SHA-256 differs from manifest.json's: the file was altered or truncated; copy the artifact again")
    return str(d / name)


class Classifier:
    def __init__(self, artifact_dir: str | Path):
        d = Path(artifact_dir)
        manifest = json.loads((d / "manifest.json").read_text())
        graph = "onnx/model.onnx" if "onnx/model.onnx" in manifest["files"] else "model.onnx"  # older artifacts: at the top
        if manifest["validation"].get("passed") is False:  # kept by `compress run` after failing its accuracy guard
            raise ValueError(f"{d}: {manifest['validation']['failure']}; re-export it with `compress export {d} --kernel float`")
        self.task = manifest["task"]["name"]
        self.labels = json.loads((d / "config.json").read_text())["id2label"] if (d / "config.json").is_file() else {}
        self.inputs = manifest["model"]["inputs"]
        self.tokenizer = Tokenizer.from_file(verified(d, "tokenizer.json", manifest))
        self.tokenizer.enable_truncation(manifest["config"]["train"]["max_length"])
        self.tokenizer.enable_padding(pad_id=manifest["model"]["pad_token_id"])  # RoBERTa pads with 1, not 0
        self.session = ort.InferenceSession(verified(d, graph, manifest), providers=["CPUExecutionProvider"])

    def logits(self, text_a: list[str], text_b: list[str] | None = None) -> np.ndarray:
        encs = self.tokenizer.encode_batch(list(zip(text_a, text_b)) if text_b else text_a)
        feed = {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
        }
        return self.session.run(["logits"], {k: feed[k] for k in self.inputs})[0]


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    clf = Classifier(argv[0])
    out = clf.logits([argv[1]], [argv[2]] if len(argv) == 3 else None)[0]
    if out.size == 1:
        print(f"{clf.task}: score {out[0]:.3f}")
    else:
        p = np.exp(out - out.max()) / np.exp(out - out.max()).sum()
        k = int(p.argmax())
        print(f"{clf.task}: label {k} {clf.labels.get(str(k), '')} (p={p.max():.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
