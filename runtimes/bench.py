"""Latency percentiles and throughput of an ONNX Runtime session on fixed-shape inputs."""

from __future__ import annotations

import time

import numpy as np

from compress.manifest import Latency
from compress.runtimes.session import run_logits


def inputs(batch: int, seq_len: int, vocab_size: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 1000 + vocab_size, size=(batch, seq_len), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def sample(batch: int = 4, seq_len: int = 32, seed: int = 1) -> dict[str, np.ndarray]:
    """Inputs for parity checks: random tokens, the second row padded after 20 tokens."""
    feeds = inputs(batch, seq_len, seed=seed)
    feeds["attention_mask"][1, 20:] = 0
    return feeds


def latency(sess, batch: int = 1, seq_len: int = 128, warmup: int = 5, runs: int = 50, max_seconds: float = 20.0) -> Latency:
    """Median / p90 latency in ms and throughput in sequences per second."""
    feed = inputs(batch, seq_len)
    for _ in range(warmup):
        run_logits(sess, feed)
    times, start = [], time.perf_counter()
    while len(times) < runs and (time.perf_counter() - start < max_seconds or len(times) < 5):
        t0 = time.perf_counter()
        run_logits(sess, feed)
        times.append(time.perf_counter() - t0)
    t = np.array(times) * 1e3
    return Latency(
        batch=batch,
        seq_len=seq_len,
        runs=len(t),
        median_ms=float(np.median(t)),
        p90_ms=float(np.percentile(t, 90)),
        throughput_seq_s=float(batch * 1e3 / np.median(t)),
    )
