"""Serve the browser example with a compress artifact at ./model/: python examples/web/serve.py ARTIFACT_DIR [--port 8000]

Any static file server does (copy or link the artifact to examples/web/model/); this one maps /model/ to
ARTIFACT_DIR and sends the cross-origin isolation headers that let ONNX Runtime's WASM backend use threads.
`npm ci` in examples/web first (the page loads Transformers.js and ONNX Runtime's WASM files from node_modules).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, artifact: Path, **kwargs):
        self.artifact = artifact
        super().__init__(*args, directory=str(HERE), **kwargs)

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        if clean.startswith("/model/"):
            return str(self.artifact / clean.removeprefix("/model/"))
        return super().translate_path(path)

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args):  # quiet
        pass


def server(artifact: str | Path, port: int = 8000, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    artifact = Path(artifact).resolve()
    if not (artifact / "config.json").is_file():
        raise SystemExit(f"{artifact} has no config.json: pass a compress artifact directory (re-export an older one: compress export DIR)")
    if not (HERE / "node_modules" / "@huggingface" / "transformers").is_dir():
        raise SystemExit(f"{HERE}/node_modules is missing: run `npm ci` in {HERE}")
    return http.server.ThreadingHTTPServer((host, port), functools.partial(Handler, artifact=artifact))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)
    srv = server(args.artifact, args.port)
    print(f"open http://127.0.0.1:{srv.server_address[1]}/ (Ctrl-C stops)")
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
