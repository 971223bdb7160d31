"""ONNX graph building (installed as ``compress.exporters``): torch -> fp32 ONNX -> fusions -> quantized weights -> verify."""
