"""How faithful is the int8 graph to the exact model, with and without activation smoothing?

    python benchmarks/smoothing.py --data-dir ../shared/data/glue --artifacts DIR ... [--alphas none 0.5 0.75]

For each artifact (any `compress run` directory): its `--kernel float` re-export is the exact
reference (equal to PyTorch within 1e-4); against it, on the whole dev set, this project's int8
graph re-exported with each smoothing alpha (`none`: no smoothing, every weight kept at its exact
codes), and ONNX Runtime's own `quantize_dynamic` (per channel, int8) of the same weights
constant-folded. (Here smoothing is applied at any bit width; `compress run` smooths only weights
of <= 4 bits, ExportConfig.smooth_max_bits.) Printed: dev metric, prediction agreement with the reference, mean and max
|logit difference|. The artifacts' own model.onnx files are not touched (copies in a temp dir).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from _results import write  # benchmarks/ is on sys.path when a script here runs
from export_vs_ort import reexported

from compress.files import graph_path


def ort_dynamic(float_graph: Path, work: Path) -> Path:
    """ORT's quantize_dynamic of the float-kernel graph, its unpacking subgraphs folded first."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # constant folding only
    so.optimized_model_filepath = str(work / "folded.onnx")
    ort.InferenceSession(str(float_graph), so, providers=["CPUExecutionProvider"])
    quantize_dynamic(
        work / "folded.onnx",
        work / "ort_int8.onnx",
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return work / "ort_int8.onnx"


def with_alpha(art: Path, alpha: float | None, work: Path) -> Path:
    """The artifact's int8 graph exported again with this smoothing alpha (at any bits, for the comparison)."""
    import dataclasses

    from compress import build, calibration, restore
    from compress import manifest as mf
    from compress.exporters.export import export
    from compress.runtimes.bench import sample

    m = mf.read(art, mf.ArtifactManifest)
    cfg = restore.config_from_manifest(m, kernel="int8")
    cfg = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, smooth_alpha=alpha, smooth_max_bits=8))
    r = restore.restore(art, m, cfg)
    linears, embedding = build.prepare(r.model, r.qweights)
    out = work / f"{art.name}-alpha{alpha}.onnx"
    export(r.model, linears, embedding, out, cfg.export, sample(), calibration.batches(r.calibration))
    return out


def main() -> int:
    from compress import manifest as mf
    from compress import metrics, tasks
    from compress.runtimes import evaluate
    from compress.runtimes.session import open_session

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--artifacts", nargs="+", type=Path, required=True)
    ap.add_argument("--alphas", nargs="+", default=["none", "0.5", "0.75"])
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "smoothing"))
    args = ap.parse_args()
    alphas = [None if a.lower() == "none" else float(a) for a in args.alphas]
    rows, lines = [], ["| artifact | graph | dev metric | agreement | mean abs dlogit | max abs dlogit |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for art in args.artifacts:
            m = mf.read(art, mf.ArtifactManifest)
            task = tasks.get_task(m.task.name)
            dev = tasks.load_task(task, args.data_dir)["dev"]
            work = Path(tmp) / art.name
            work.mkdir()

            def logits(path: Path) -> np.ndarray:
                return evaluate.texts_logits(
                    open_session(path), art / "tokenizer.json", m.config.train.max_length, dev.text_a, dev.text_b, m.model.pad_token_id
                )

            exact = graph_path(reexported(art, "float", work))
            ref = logits(exact)
            q, mode = m.config.quant, m.config.train.mode
            label = f"{art.name} ({mode}, {q.bits}-bit {q.method})"
            graphs = [("exact (float kernel)", exact), ("ORT quantize_dynamic", ort_dynamic(exact, work))]
            graphs += [(f"int8, alpha {a}" if a else "int8, no smoothing", with_alpha(art, a, work)) for a in alphas]
            for name, path in graphs:
                lg = logits(path)
                r = {
                    "artifact": label,
                    "graph": name,
                    "metric": metrics.compute(task, lg, dev.labels)[task.metric],
                    "agreement": float(np.mean(metrics.predictions(task, lg) == metrics.predictions(task, ref))),
                    "mean_abs_dlogit": float(np.abs(lg - ref).mean()),
                    "max_abs_dlogit": float(np.abs(lg - ref).max()),
                }
                rows.append(r)
                lines.append(
                    f"| {label} | {name} | {r['metric']:.4f} | {r['agreement']:.4f} | {r['mean_abs_dlogit']:.4f} | "
                    f"{r['max_abs_dlogit']:.3f} |"
                )
                print(lines[-1], flush=True)
    write(args.results, "int8 graphs against the exact model: activation smoothing", rows, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
