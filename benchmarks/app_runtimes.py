"""What each app runtime costs for one artifact: load time, latency of one input, what it ships or downloads.

    python benchmarks/app_runtimes.py --data-dir ../shared/data/glue --artifact ARTIFACT [--pairs 50]

ARTIFACT: a pair task's `compress run` directory exported with `compress export ARTIFACT --with-tokenizer`.
The first --pairs dev pairs are classified one at a time (as an app serving requests would) by:
examples/classify.py's Classifier (onnxruntime + tokenizers), Optimum's ORTModelForSequenceClassification
through pipeline(), the graph with the tokenizer inside (onnxruntime + onnxruntime-extensions),
examples/node (Transformers.js on onnxruntime-node) and examples/web in headless Chromium
(Transformers.js on onnxruntime-web, WASM), each in its own process after the others (not round-robin:
compare ratios loosely). Printed: load time (open the model and tokenizer, until the first input can
run), median latency of one input, and bytes: the files it reads (the browser: every byte the page
fetched; its screenshot goes to results/web_example.png). `npm ci` in examples/node and examples/web first; chromium from Debian.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _results import write  # benchmarks/ is on sys.path when a script here runs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def timed(fn, inputs) -> float:
    ms = []
    for x in inputs:
        t0 = time.perf_counter()
        fn(*x)
        ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ms)


def python_runtimes(art: Path, pairs) -> list[dict]:
    from compress.exporters import tokenizer_graph

    sys.path.insert(0, str(EXAMPLES))
    from classify import Classifier

    rows = []
    t0 = time.perf_counter()
    clf = Classifier(art)
    load = (time.perf_counter() - t0) * 1e3
    rows.append(
        {
            "runtime": "Python: onnxruntime + tokenizers (examples/classify.py)",
            "load_ms": load,
            "input_ms": timed(lambda a, b: clf.logits([a], [b]), pairs),
            "bytes": (art / "onnx" / "model.onnx").stat().st_size + (art / "tokenizer.json").stat().st_size,
            "ships": "onnx/model.onnx + tokenizer.json; pip: onnxruntime, tokenizers",
        }
    )

    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    t0 = time.perf_counter()
    pipe = pipeline(
        "text-classification", model=ORTModelForSequenceClassification.from_pretrained(art), tokenizer=AutoTokenizer.from_pretrained(art)
    )
    load = (time.perf_counter() - t0) * 1e3
    rows.append(
        {
            "runtime": "Python: Optimum ORTModelForSequenceClassification + pipeline()",
            "load_ms": load,
            "input_ms": timed(lambda a, b: pipe({"text": a, "text_pair": b}), pairs),
            "bytes": rows[0]["bytes"],
            "ships": "the artifact directory; pip: optimum-onnx[onnxruntime], transformers, torch",
        }
    )

    graph = art / "onnx" / tokenizer_graph.FILE
    t0 = time.perf_counter()
    sess = tokenizer_graph.ort_session(graph)
    load = (time.perf_counter() - t0) * 1e3
    rows.append(
        {
            "runtime": "Python: tokenizer in the graph (onnxruntime + onnxruntime-extensions)",
            "load_ms": load,
            "input_ms": timed(lambda a, b: tokenizer_graph.logits(sess, [a], [b]), pairs),
            "bytes": graph.stat().st_size,
            "ships": f"onnx/{tokenizer_graph.FILE} only; pip: onnxruntime, onnxruntime-extensions",
        }
    )
    return rows


def node_runtime(art: Path, pairs_file: Path) -> dict:
    r = subprocess.run(
        ["node", "classify.mjs", str(art), "--time", str(pairs_file)], cwd=EXAMPLES / "node", capture_output=True, text=True, check=True
    )
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {
        "runtime": "Node.js: Transformers.js on onnxruntime-node (examples/node)",
        "load_ms": out["loadMs"],
        "input_ms": out["perInputMs"],
        "bytes": (art / "onnx" / "model.onnx").stat().st_size + (art / "tokenizer.json").stat().st_size,
        "ships": f"onnx/model.onnx + tokenizer.json + config files; node_modules {_du(EXAMPLES / 'node' / 'node_modules') / 1e6:.0f} MB",
    }


def browser_runtime(art: Path, pairs_file: Path, screenshot: Path) -> dict:
    sys.path.insert(0, str(EXAMPLES / "web"))
    import serve

    served: dict[str, int] = {}
    original = serve.Handler.copyfile

    def counting(self, source, outputfile):  # every byte the page fetched, by path
        pos = source.tell()
        source.seek(0, 2)
        served[self.path] = source.tell() - pos
        source.seek(pos)
        original(self, source, outputfile)

    serve.Handler.copyfile = counting
    srv = serve.server(art, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    r = subprocess.run(
        ["node", "drive.mjs", f"http://127.0.0.1:{srv.server_address[1]}/", str(pairs_file), str(screenshot), chromium],
        cwd=EXAMPLES / "web",
        capture_output=True,
        text=True,
        check=True,
    )
    srv.shutdown()
    out = json.loads(r.stdout.strip().splitlines()[-1])
    library = sum(n for p, n in served.items() if p.startswith("/node_modules/"))
    model = sum(n for p, n in served.items() if p.startswith("/model/"))
    return {
        "runtime": "Browser: Transformers.js on onnxruntime-web WASM (examples/web, headless Chromium)",
        "load_ms": out["loadMs"],
        "input_ms": out["perInputMs"],
        "bytes": library + model,
        "ships": f"downloads {model / 1e6:.1f} MB model + tokenizer, {library / 1e6:.1f} MB library and WASM "
        f"({', '.join(sorted(Path(p).name for p in served if p.startswith('/node_modules/')))}); "
        f"threads: {'yes' if out['crossOriginIsolated'] else 'no (page not cross-origin isolated)'}",
    }


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> int:
    from compress import manifest as mf
    from compress import tasks

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "app_runtimes"))
    args = ap.parse_args()
    args.artifact = args.artifact.resolve()  # the Node apps run in their own folders
    m = mf.read(args.artifact, mf.ArtifactManifest)
    dev = tasks.load_task(tasks.get_task(m.task.name), args.data_dir)["dev"]
    pairs = list(zip(dev.text_a[: args.pairs], dev.text_b[: args.pairs]))
    with tempfile.TemporaryDirectory() as tmp:
        pairs_file = Path(tmp) / "pairs.jsonl"
        pairs_file.write_text("".join(json.dumps({"text": a, "text_pair": b}) + "\n" for a, b in pairs))
        rows = python_runtimes(args.artifact, pairs) + [
            node_runtime(args.artifact, pairs_file),
            browser_runtime(args.artifact, pairs_file, Path(args.results).with_name("web_example.png")),
        ]
    table = [
        f"{m.task.name}, {m.config.quant.bits}-bit, activations per {m.config.export.activations}; "
        f"{len(pairs)} dev pairs one at a time; 2-core CPU",
        "",
        "| runtime | load ms | one input ms (median) | MB read / downloaded | what it takes |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(f"| {r['runtime']} | {r['load_ms']:.0f} | {r['input_ms']:.1f} | {r['bytes'] / 1e6:.1f} | {r['ships']} |")
    write(args.results, "What each app runtime costs", rows, "\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
