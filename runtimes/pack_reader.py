"""Use a pack in an app: `compress.Pack(path)`, then `.tasks`, `.predict(task, texts)`.

Needs only onnxruntime, tokenizers and numpy. The pack's manifest is verified when it is opened
(SHA-256 of every file); a task's ONNX Runtime session is created the first time the task is used,
so an app that serves one task of ten pays for one.

    from compress import Pack
    pack = Pack("packs/glue")
    pack.tasks                                    # ['cola', 'mrpc', 'sst2', 'stsb']
    pack.predict("sst2", ["a gripping, funny film"])   # ['1']
    pack.predict("mrpc", ["He said so."], ["So he said."])
    pack.logits("stsb", ["A man plays."], ["A man is playing."])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress import manifest as mf
from compress.errors import CompressError, ConfigError
from compress.runtimes import evaluate
from compress.runtimes.session import open_session
from compress.runtimes.shared_weights import SharedWeights


class UnknownTaskError(CompressError, KeyError):
    """A task the pack does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Pack:
    """share_backbone: the task sessions take the backbone's tensors from one read-only map of its file and allocate from one
    arena (ONNX Runtime only; compress.runtimes.shared_weights), rather than each holding its own."""

    def __init__(self, path: str | Path, threads: int | None = None, provider: str = "cpu", share_backbone: bool = True):
        self.path = Path(path)
        self.manifest: mf.PackManifest = mf.read(self.path, mf.PackManifest)
        self.threads, self.provider = threads, provider
        self._shared = SharedWeights(self.path / self.manifest.shared) if share_backbone and provider != "openvino" else None
        self._sessions: dict = {}
        self._initializers: dict = {}  # task -> the OrtValues its session reads in place of its own initializers
        self._tokenizers: dict = {}

    @property
    def tasks(self) -> list[str]:
        return sorted(self.manifest.tasks)

    def task(self, name: str) -> mf.PackTask:
        if name not in self.manifest.tasks:
            raise UnknownTaskError(f"{self.path} has no task {name!r}: it holds {', '.join(self.tasks)}")
        return self.manifest.tasks[name]

    def session(self, name: str):
        """The task's ONNX Runtime session, created on first use (the shared codes unpacked and masked in one run before the
        session loads: compress.runtimes.staged_fold; kept in the fold cache for later loads: compress.runtimes.fold_cache)."""
        if name not in self._sessions:
            graph = self.path / self.task(name).onnx
            shared = self._shared is not None
            self._initializers[name] = self._shared.initializers(self.task(name).shared_tensors) if shared else {}
            self._sessions[name] = open_session(
                graph,
                self.provider,
                threads=self.threads,
                initializers=self._initializers[name],
                shared_arena=shared,
                fold_first=True,
                fold_key=f"pack {mf.manifest_sha256(self.path)} {name}",  # the manifest's hash covers every file it verified
            )
        return self._sessions[name]

    def _tokenizer(self, name: str):
        t = self.task(name)
        if t.max_length not in self._tokenizers:
            self._tokenizers[t.max_length] = evaluate.load_tokenizer(self.path / self.manifest.tokenizer, t.max_length)
        return self._tokenizers[t.max_length]

    def logits(self, name: str, texts: list[str], texts_b: list[str] | None = None, batch_size: int = 32) -> np.ndarray:
        if texts_b is not None and len(texts_b) != len(texts):
            raise ConfigError(f"{len(texts)} first texts but {len(texts_b)} second texts: pass one second text per first text")
        t = self.task(name)
        enc = evaluate.encode(self._tokenizer(name), list(texts), None if texts_b is None else list(texts_b))
        return evaluate.logits(self.session(name), enc, batch_size, t.pad_token_id)

    def predict(self, name: str, texts: list[str], texts_b: list[str] | None = None) -> list:
        """Label names (classification) or scores (regression, e.g. STS-B), one per text (pair)."""
        out = self.logits(name, texts, texts_b)
        labels = self.task(name).labels
        if not labels:
            return [float(x) for x in out[:, 0]]
        return [labels[i] for i in out.argmax(-1)]

    def __repr__(self) -> str:
        return f"Pack({str(self.path)!r}, tasks={self.tasks})"
