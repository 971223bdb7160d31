from compress.runtimes import bench, providers


def test_providers_report_skip_reasons():
    cpu = providers.get("cpu")
    assert cpu.available and cpu.session_providers() == ["CPUExecutionProvider"]
    fixes = {"cuda": "install onnxruntime-gpu", "tensorrt": "install onnxruntime-gpu", "openvino-ep": "install onnxruntime-openvino"}
    for p in providers.all_providers():
        assert p.available or fixes[p.name] in p.reason, p
    assert providers.get("openvino").available  # OpenVINO's runtime: a test dependency (pyproject [test]), verified on every run
    assert providers.Provider("openvino-ep", True).session_providers() == ["OpenVINOExecutionProvider", "CPUExecutionProvider"]


def test_provider_options():
    trt = providers.Provider("tensorrt", True)
    assert trt.session_providers() == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": True, "trt_sparsity_enable": False, "trt_int8_enable": False}),
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert trt.session_providers(sparse=True)[0][1]["trt_sparsity_enable"] is True
    assert trt.session_providers(qdq=True)[0][1]["trt_int8_enable"] is True  # explicit quantization: the graph's Q/DQ scales
    assert providers.Provider("cuda", True).session_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_bench_inputs_shape():
    feed = bench.inputs(3, 16)
    assert feed["input_ids"].shape == (3, 16) and feed["attention_mask"].sum() == 48
