"""Do 2:4 masks run faster on NVIDIA sparse tensor cores? Measured with PyTorch's semi-structured
sparse tensors (cuSPARSELt / CUTLASS), on a CUDA GPU of compute capability 8.0 or newer.

    python benchmarks/sparse24_gpu.py --model minilm --results benchmarks/results/sparse24_gpu

For the encoder given (`--model`), every target linear gets a 2:4 mask along its input dimension
(`--artifact`: the mask learned in a `--sparsity 2:4` artifact; else the magnitude 2:4 mask that
such training starts from; which 2 of 4 are kept does not change the timing). Then, in fp16 at
batch `--batch` x `--seq-len` tokens:
  * each distinct linear shape alone: dense matmul vs the same masked weight as a
    SparseSemiStructuredTensor (median of CUDA-event timings), and the max difference;
  * the whole encoder forward with all masked linears dense vs semi-structured.
`--shapes HIDDEN,FFN` adds the linear shapes of a larger encoder (random weights), e.g. 768,3072
for bert-base and 1024,4096 for bert-large: larger matrices are where sparse kernels can pay.
ONNX Runtime's TensorRT provider with its sparsity option is the deployment path for the exported
graph; this benchmark measures what the sparse tensor cores give on the same masks.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from _results import write  # benchmarks/ is on sys.path when a script here runs


def time_cuda(fn, rounds: int, warmup: int = 5) -> float:
    """Median milliseconds of fn() over `rounds` CUDA-event timings."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return statistics.median(out)


class SemiStructuredLinear(torch.nn.Module):
    """y = x W^T + b with W held as a 2:4 SparseSemiStructuredTensor (inputs flattened to 2-D)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.weight = torch.nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
        self.bias = bias
        self.out_features = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.linear(x.reshape(-1, x.shape[-1]), self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)


def masked_classifier(model: str, artifact: str | None) -> torch.nn.Module:
    """The classifier (fp32, CPU) with a 2:4 MaskedLinear per target linear."""
    from compress import masking
    from compress.models import build_classifier

    clf, _, _ = build_classifier(model, 2)
    masking.apply_masks_(clf, masking.MaskConfig(nm=(2, 4)))
    if artifact:
        from pathlib import Path

        masking.set_masks_(clf, masking.load_masks(Path(artifact) / "mask.npz"))
    for n, m in masking.masks(clf).items():
        if not bool((m.reshape(m.shape[0], -1, 4).sum(-1) == 2).all()):
            raise SystemExit(f"{n}: the mask is not 2:4 along the input dimension")
    return clf


def fp16_cuda(clf, sparse: bool) -> torch.nn.Module:
    """fp16 copy on the GPU with masks folded (masking.folded); sparse: the folded linears as SemiStructuredLinear."""
    from compress import masking

    names = list(masking.masked_layers(clf))
    m = masking.folded(clf).half().cuda().eval()
    if sparse:
        for name in names:
            lin = m.get_submodule(name)
            parent, _, attr = name.rpartition(".")
            setattr(m.get_submodule(parent), attr, SemiStructuredLinear(lin.weight.detach(), lin.bias))
    return m


BACKENDS = ["cusparselt", "cutlass"]  # those that fail to run here are dropped (and said so) in main()


def use_backend(backend: str) -> None:
    """PyTorch's semi-structured tensors run on cuSPARSELt unless told to use its CUTLASS kernels."""
    from torch.sparse import SparseSemiStructuredTensor

    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"


def kernel_rows(shapes: list[tuple[int, int, str]], tokens: int, rounds: int) -> list[dict]:
    from torch.sparse import to_sparse_semi_structured

    from compress.masking import _binarize

    rows = []
    for out_f, in_f, label in shapes:
        w = torch.randn(out_f, in_f, device="cuda", dtype=torch.float16)
        w = w * _binarize(w.abs().float(), 0.0, (2, 4)).half()
        x = torch.randn(tokens, in_f, device="cuda", dtype=torch.float16)
        ref = torch.nn.functional.linear(x, w)
        row = {
            "what": f"linear {label} {in_f}->{out_f}",
            "tokens": tokens,
            "dense_ms": time_cuda(lambda: torch.nn.functional.linear(x, w), rounds),
            "sparse_ms": {},
            "max_abs_diff": {},
        }
        for backend in BACKENDS:
            use_backend(backend)
            ws = to_sparse_semi_structured(w)
            row["sparse_ms"][backend] = time_cuda(lambda: torch.nn.functional.linear(x, ws), rounds)
            row["max_abs_diff"][backend] = (ref - torch.nn.functional.linear(x, ws)).abs().max().item()
        rows.append(row)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--artifact", default=None, help="A `compress run --sparsity 2:4` directory: use its learned mask.")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--shapes", nargs="*", default=["768,3072", "1024,4096"], help="HIDDEN,FFN of larger encoders (random weights).")
    p.add_argument("--results", default="benchmarks/results/sparse24_gpu")
    a = p.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        raise SystemExit("sparse24_gpu.py needs a CUDA GPU of compute capability 8.0+ (Ampere or newer) and a CUDA build of torch")
    torch.manual_seed(0)
    tokens = a.batch * a.seq_len

    for backend in list(BACKENDS):
        try:
            use_backend(backend)
            from torch.sparse import to_sparse_semi_structured

            w = torch.zeros(128, 128, device="cuda", dtype=torch.float16)
            w[:, ::2] = 1
            torch.nn.functional.linear(torch.ones(128, 128, device="cuda", dtype=torch.float16), to_sparse_semi_structured(w))
        except (RuntimeError, NotImplementedError) as e:
            print(f"2:4 backend {backend} does not run here ({str(e).splitlines()[0]}): left out")
            BACKENDS.remove(backend)
    if not BACKENDS:
        raise SystemExit("no semi-structured sparse backend runs on this GPU / torch build")
    clf = masked_classifier(a.model, a.artifact)
    hidden = clf.encoder.config.hidden_size
    ffn = clf.encoder.config.intermediate_size
    shapes = [(hidden, hidden, f"{a.model} attention"), (ffn, hidden, f"{a.model} FFN1"), (hidden, ffn, f"{a.model} FFN2")]
    for spec in a.shapes:
        h, f = (int(v) for v in spec.split(","))
        shapes += [(h, h, f"h{h} attention"), (f, h, f"h{h} FFN1"), (h, f, f"h{h} FFN2")]
    rows = kernel_rows(shapes, tokens, a.rounds)

    ids = torch.randint(1000, 20000, (a.batch, a.seq_len), device="cuda")
    att = torch.ones_like(ids)
    outs, times = {}, {}
    for variant in ("dense", *BACKENDS):
        if variant != "dense":
            use_backend(variant)
        m = fp16_cuda(clf, variant != "dense")
        with torch.inference_mode():
            outs[variant] = m(input_ids=ids, attention_mask=att).float()
            times[variant] = time_cuda(lambda: m(input_ids=ids, attention_mask=att), a.rounds)
    rows.append(
        {
            "what": f"{a.model} encoder + head forward",
            "tokens": tokens,
            "dense_ms": times["dense"],
            "sparse_ms": {b: times[b] for b in BACKENDS},
            "max_abs_diff": {b: (outs["dense"] - outs[b]).abs().max().item() for b in BACKENDS},
        }
    )

    name = torch.cuda.get_device_name()
    head = ["what", "dense ms"] + [f"2:4 {b} ms (speedup)" for b in BACKENDS] + ["max abs diff"]
    lines = [
        f"{name}, torch {torch.__version__}, fp16, {a.batch} x {a.seq_len} tokens, median of {a.rounds} CUDA-event timings",
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    for r in rows:
        cells = [f"{r['sparse_ms'][b]:.4f} ({r['dense_ms'] / r['sparse_ms'][b]:.2f}x)" for b in BACKENDS]
        lines.append(f"| {r['what']} | {r['dense_ms']:.4f} | " + " | ".join(cells) + f" | {max(r['max_abs_diff'].values()):.2e} |")
    table = "\n".join(lines)
    write(a.results, "2:4 masks on sparse tensor cores (PyTorch semi-structured sparsity)", {"device": name, "rows": rows}, table)


if __name__ == "__main__":
    sys.exit(main())
