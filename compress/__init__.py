"""compress: fine-tune BERT-family encoders by sparsification on low-bit frozen weights, export to ONNX."""
__version__ = "0.1.0"
