"""ONNX graph building (installed as ``compress.exporters``): torch -> fp32 ONNX -> fusions -> quantized weights -> verify.

``export.export`` runs it; ``weights.quantize_graph`` replaces each quantized weight through the kernel's piece
(``kernels``: int8, float, nbits; the int8 kernel's activation modes in ``activations``; its smoothing in ``smoothing``).
"""
