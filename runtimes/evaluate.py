"""The task metric through ONNX Runtime: tokenize with tokenizer.json, batch, run, score."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.runtimes.session import run_logits


def load_tokenizer(path: str | Path, max_length: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(path)))
    tok.enable_truncation(max_length)
    tok.no_padding()
    return tok


def encode(tok, text_a: list[str], text_b: list[str] | None) -> dict[str, list[list[int]]]:
    encs = tok.encode_batch(list(zip(text_a, text_b)) if text_b is not None else list(text_a))
    return {
        "input_ids": [e.ids for e in encs],
        "attention_mask": [e.attention_mask for e in encs],
        "token_type_ids": [e.type_ids for e in encs],
    }


def pad(enc: dict[str, list[list[int]]], rows, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Rows `rows` of an encoding as int64 arrays, right-padded to the longest of them."""
    width = max(len(enc["input_ids"][i]) for i in rows)
    feed = {}
    for key, seqs in enc.items():
        arr = np.full((len(rows), width), pad_id if key == "input_ids" else 0, dtype=np.int64)
        for r, i in enumerate(rows):
            arr[r, : len(seqs[i])] = seqs[i]
        feed[key] = arr
    return feed


def batches(enc: dict[str, list[list[int]]], batch_size: int, pad_id: int = 0):
    n = len(enc["input_ids"])
    for s in range(0, n, batch_size):
        yield pad(enc, range(s, min(n, s + batch_size)), pad_id)


def logits(sess, enc, batch_size: int = 32, pad_id: int = 0) -> np.ndarray:
    return np.concatenate([run_logits(sess, f) for f in batches(enc, batch_size, pad_id)])


def texts_logits(
    sess, tokenizer_json: str | Path, max_length: int, text_a: list[str], text_b: list[str] | None, pad_id: int = 0, batch_size: int = 32
) -> np.ndarray:
    """Tokenize with an artifact's tokenizer.json and run the texts through the session."""
    tok = load_tokenizer(tokenizer_json, max_length)
    return logits(sess, encode(tok, text_a, text_b), batch_size, pad_id)
