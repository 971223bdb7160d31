"""compress: fine-tune BERT-family encoders by sparsification on low-bit frozen weights, export to ONNX."""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Pack":  # the app-side reader of a pack: onnxruntime + tokenizers only, imported when asked for
        from compress.runtimes.pack_reader import Pack

        return Pack
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
