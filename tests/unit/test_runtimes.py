from compress.runtimes import bench, providers


def test_providers_report_skip_reasons():
    cpu = providers.get("cpu")
    assert cpu.available and cpu.session_providers() == ["CPUExecutionProvider"]
    for p in providers.all_providers():
        assert p.available or "install onnxruntime-gpu" in p.reason


def test_bench_inputs_shape():
    feed = bench.inputs(3, 16)
    assert feed["input_ids"].shape == (3, 16) and feed["attention_mask"].sum() == 48
