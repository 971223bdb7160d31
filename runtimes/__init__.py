"""ONNX Runtime sessions, providers, evaluation and benchmarking (installed as ``compress.runtimes``).

Needs neither torch nor transformers: tokenization uses the `tokenizers` library and the
artifact's tokenizer.json.
"""
