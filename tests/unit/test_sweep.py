"""compress sweep: every cell, resume, the table and plot; on the tiny BERT."""

import json

import pytest

from compress import manifest as mf
from compress import sweep
from compress.configs import RunConfig
from compress.train import TrainConfig


def config(tiny_model_dir, mini_glue, tmp_path, **kw):
    run = RunConfig(
        model=str(tiny_model_dir), task="mrpc", data_dir=str(mini_glue), train=TrainConfig(epochs=1, batch_size=8, max_length=32)
    )
    return sweep.SweepConfig(run=run, **{"bits": (32, 4), "seeds": 2, "out": str(tmp_path / "sweep"), **kw})


@pytest.mark.slow  # --full only
def test_sweep_runs_every_cell_and_resumes(tiny_model_dir, mini_glue, tmp_path, monkeypatch):
    cfg = config(tiny_model_dir, mini_glue, tmp_path)
    data = sweep.sweep(cfg)
    out = tmp_path / "sweep"
    assert {"sweep.json", "table.md", "plot.png"} <= {p.name for p in out.iterdir()}
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert len(data["cells"]) == 2 * 2 * 2 and json.loads((out / "sweep.json").read_text())["kind"] == "sweep"
    cells = {(c["mode"], c["bits"], c["seed"]): c for c in data["cells"]}
    ptq = mf.read(out / "cells" / "weights-4bit-seed1", mf.ArtifactManifest)
    assert ptq.training.init_from.endswith("weights-32bit-seed1") and ptq.training.seconds == 0
    assert ptq.config.train.seed == 1 and cells[("structure", 4, 0)]["density"] < 1
    assert data["config"]["run"]["quant_by_bits"]["4"]["method"] == "gptq" and data["config"]["run"]["quant_by_bits"]["32"]["bits"] == 32
    s = {(r["mode"], r["bits"]): r for r in data["summary"]}
    vals = [cells[("structure", 4, k)]["metrics"]["f1"] for k in (0, 1)]
    assert s[("structure", 4)]["n"] == 2 and s[("structure", 4)]["metrics"]["f1"]["mean"] == pytest.approx(sum(vals) / 2)

    # resume: finished cells are not run again; a missing one is
    import shutil

    from compress import run

    shutil.rmtree(out / "cells" / "structure-4bit-seed1")
    ran = []
    real = run.run
    monkeypatch.setattr(run, "run", lambda c, **kw: ran.append(c.out) or real(c, **kw))
    again = sweep.sweep(cfg)
    assert [p.split("/")[-1] for p in ran] == ["structure-4bit-seed1"]
    assert len(again["cells"]) == 8

    # a finished cell made with other settings is not silently reused; the settings a mode ignores do not count
    import dataclasses

    from compress.masking import MaskConfig

    other_mask = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, mask=MaskConfig(init_low=-0.02, init_high=0.58)))
    with pytest.raises(sweep.SweepError, match=r"structure-32bit-seed0 was made with other settings \(mask.init_low 0.01 \(sweep: -0.02\)"):
        sweep.sweep(other_mask)
    weights_only = dataclasses.replace(other_mask, modes=("weights",))
    assert len(sweep.sweep(weights_only)["cells"]) == 4 and len(ran) == 1
    other_lr = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, train=dataclasses.replace(cfg.run.train, mask_lr=1e-2)))
    with pytest.raises(sweep.SweepError, match="train.mask_lr 0.002"):
        sweep.sweep(other_lr)


def test_table_layout():
    summary = [
        {
            "mode": m,
            "bits": b,
            "n": 3,
            "metrics": {"f1": {"mean": mean, "sd": 0.0123}},
            "torch_metrics": {"f1": {"mean": mean + 0.001, "sd": 0.01}},
            "density": 1,
            "onnx_mb": 1,
        }
        for m, b, mean in [("weights", 32, 0.8664), ("structure", 32, 0.87), ("structure", 2, 0.8412)]
    ]
    data = {"metric": "f1", "summary": summary, "model": "minilm", "task": "mrpc", "seeds": 3, "majority": 0.8122}
    text = sweep.table(data)
    assert text.splitlines() == [
        "minilm on mrpc: dev f1 through ONNX Runtime (the exported model.onnx), mean ± SD over 3 seeds",
        "",
        "| | fp32 | 2-bit |",
        "|---|---|---|",
        "| fine-tune weights (dense; post-training quantized below 32 bits) | 0.866 ± 0.012 |  |",
        "| fine-tune structure (mask on frozen quantized weights) | 0.870 ± 0.012 | 0.841 ± 0.012 |",
        "| majority class | 0.812 | |",
    ]
    torch_rows = sweep.table(data, "torch_metrics").splitlines()
    assert torch_rows[0].endswith("in PyTorch (the paper's protocol), mean ± SD over 3 seeds")
    assert torch_rows[5] == "| fine-tune structure (mask on frozen quantized weights) | 0.871 ± 0.010 | 0.842 ± 0.010 |"
    assert sweep.tables(data) == text + "\n" + sweep.table(data, "torch_metrics")


def test_failed_guard_cells_leave_mean_and_sd():
    rec = lambda seed, f1, ok: {
        "mode": "structure",
        "bits": 4,
        "seed": seed,
        "metrics": {"f1": f1},
        "torch_metrics": {"f1": f1},
        "density": 0.9,
        "onnx_bytes": 10**6,
        "validation_passed": ok,
    }
    summary = sweep.summarize([rec(0, 0.80, True), rec(1, 0.40, False), rec(2, 0.82, True)])
    s = summary[0]
    assert s["n"] == 2 and s["failed"] == 1 and s["metrics"]["f1"]["mean"] == pytest.approx(0.81)
    data = {"metric": "f1", "summary": summary, "model": "m", "task": "mrpc", "seeds": 3, "majority": 0.5}
    text = sweep.table(data)
    assert "0.810 ± 0.014 (2 seeds; 1 failed its guard)" in text and "left out of mean and SD" in text
    none_ok = sweep.summarize([rec(0, 0.4, False)])
    assert none_ok[0]["n"] == 0 and "all 1 failed their guard" in sweep.table({**data, "summary": none_ok})


def test_a_damaged_cell_is_an_error_not_a_silent_retrain(tiny_model_dir, mini_glue, tmp_path):
    cfg = config(tiny_model_dir, mini_glue, tmp_path, modes=("structure",), bits=(4,), seeds=1)
    sweep.sweep(cfg)
    with open(tmp_path / "sweep" / "cells" / "structure-4bit-seed0" / "mask.npz", "ab") as f:
        f.write(b"\0")
    with pytest.raises(sweep.SweepError, match=r"cell structure-4bit-seed0: .*mask.npz.*delete .*structure-4bit-seed0 to train it again"):
        sweep.sweep(cfg)


def test_bad_sweep_config(tiny_model_dir, mini_glue, tmp_path):
    with pytest.raises(sweep.SweepError, match="modes"):
        config(tiny_model_dir, mini_glue, tmp_path, modes=("dense",))
    with pytest.raises(ValueError, match="bits=3"):
        config(tiny_model_dir, mini_glue, tmp_path, bits=(3,))


@pytest.mark.slow  # --full only
def test_sweep_on_ray_gives_the_serial_table(tiny_model_dir, mini_glue, tmp_path):
    """A local Ray instance with 2 CPUs, one CPU (and thread) per cell, against the same cells run serially with one thread."""
    import dataclasses

    import ray
    import torch

    ray_cfg = config(tiny_model_dir, mini_glue, tmp_path, bits=(32, 4), seeds=1, parallel="ray", cpus_per_cell=1, out=str(tmp_path / "ray"))
    serial_cfg = dataclasses.replace(
        ray_cfg, parallel="serial", out=str(tmp_path / "serial"), run=dataclasses.replace(ray_cfg.run, threads=1)
    )
    threads = torch.get_num_threads()
    try:
        serial = sweep.sweep(serial_cfg)
        ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        parallel = sweep.sweep(ray_cfg)
    finally:
        ray.shutdown()
        torch.set_num_threads(threads)
    assert sorted((c["mode"], c["bits"]) for c in parallel["cells"]) == [
        ("structure", 4),
        ("structure", 32),
        ("weights", 4),
        ("weights", 32),
    ]
    assert sweep.tables(parallel) == sweep.tables(serial)
    assert [c["metrics"] for c in parallel["cells"]] == [c["metrics"] for c in serial["cells"]]
    m = mf.read(tmp_path / "ray" / "cells" / "weights-4bit-seed0", mf.ArtifactManifest)
    assert m.training.init_from.endswith("weights-32bit-seed0")  # the second wave quantized the first wave's fine-tuning


@pytest.mark.slow  # --full only
def test_sweeps_over_disjoint_seeds_share_out(tiny_model_dir, mini_glue, tmp_path, monkeypatch):
    """One process per seed (e.g. on one GPU), then a sweep over the union only collects."""
    import dataclasses

    from compress import run

    base = config(tiny_model_dir, mini_glue, tmp_path, modes=("structure",), bits=(4,), seeds=1)
    for seed in (3, 4):
        sweep.sweep(dataclasses.replace(base, run=dataclasses.replace(base.run, train=dataclasses.replace(base.run.train, seed=seed))))
    assert sorted(p.name for p in (tmp_path / "sweep" / "cells").iterdir()) == ["structure-4bit-seed3", "structure-4bit-seed4"]
    monkeypatch.setattr(run, "run", lambda c, **kw: pytest.fail(f"{c.out} was run again"))
    union = dataclasses.replace(base, seeds=2, run=dataclasses.replace(base.run, train=dataclasses.replace(base.run.train, seed=3)))
    data = sweep.sweep(union)
    assert [c["seed"] for c in data["cells"]] == [3, 4] and data["summary"][0]["n"] == 2
    m = mf.read(tmp_path / "sweep" / "cells" / "structure-4bit-seed4", mf.ArtifactManifest)
    assert m.config.train.seed == 4
