"""An artifact directory back to its trained torch model: the base model (or its backbone) quantized alike, mask.npz,
trainable.safetensors. What `compress export`, `compress pack` and the benchmarks rebuild graphs from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress import backbone, build, files, maskcodec, masking, models, tasks, train
from compress import manifest as mf
from compress.configs import RunConfig
from compress.errors import ArtifactError
from compress.qweight import QWeight


@dataclass
class Restored:
    model: object  # models.SequenceClassifier in eval mode
    tokenizer: object
    qweights: dict[str, QWeight]
    calibration: dict[str, np.ndarray] | None


def config_from_manifest(m: mf.ArtifactManifest, backbone_dir: str | None = None, **export_overrides) -> RunConfig:
    """The RunConfig that rebuilds an artifact; backbone_dir overrides where its backbone is now."""
    c = m.config
    overrides = {k: v for k, v in export_overrides.items() if v is not None}
    if overrides.get("kernel", c.export.kernel) != c.export.kernel:
        overrides.setdefault("activations", None)  # another kernel: its default activations (configs.default_activations)
        overrides.setdefault("prefold", False)  # and its own weights (prefold is the int8 kernel's)
    exp = dataclasses.replace(c.export, **overrides)
    model = m.model.name if m.model.name == models.EMBEDDED else m.model.location
    bb = None
    if m.backbone is not None:
        bb = backbone_dir or m.backbone.path
        if not Path(bb).is_dir():
            raise backbone.BackboneError(
                f"the backbone this artifact was trained on ({m.backbone.sha256[:12]}...) is not at {bb}: pass --backbone DIR"
            )
    return RunConfig(
        model=model, task=m.task.name, pooling=m.model.pooling, quant=c.quant, mask=c.mask, train=c.train, export=exp, backbone=bb
    )


def _calibration(directory: Path, m: mf.ArtifactManifest, cfg: RunConfig) -> dict[str, np.ndarray] | None:
    """The calibration tokens saved in the artifact (None where it has none and needs none)."""
    if m.materialized_from is not None and not (directory / files.CALIBRATION).is_file() and cfg.export.kernel == "int8":
        raise ArtifactError(
            f"{directory} was materialized from the pack {m.materialized_from.pack} and has no calibration "
            f"tokens to smooth a new int8 graph with: re-export the original artifact, or use --kernel float"
        )
    if (directory / files.CALIBRATION).is_file():
        with np.load(directory / files.CALIBRATION) as z:
            return {k: z[k] for k in z.files}
    if cfg.quant.method == "gptq" and cfg.quant.enabled and cfg.quant.calibration == "task" and not cfg.backbone:
        raise ArtifactError(f"{directory / files.CALIBRATION} is missing: GPTQ needs its calibration tokens; rerun `compress run`")
    return None


def restore(directory: Path, m: mf.ArtifactManifest, cfg: RunConfig) -> Restored:
    """The trained torch model from an artifact: base model (or its backbone) + quantization + mask.npz + trainable.safetensors."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if m.backbone is not None:
        build.resolve_backbone(cfg, m.backbone.sha256)  # the same weights it was trained on
    task = tasks.get_task(cfg.task)
    calib = _calibration(directory, m, cfg)
    b = build.build(cfg, task, calib, token_types="token_type_ids" in m.model.inputs)
    model, qweights = b.model, b.qweights
    trained = load_file(str(directory / files.TRAINABLE))
    if cfg.train.mode == "structure":
        _set_masks(model, directory / files.MASKS)
        missing = set(model.head_parameters()) - set(trained)
        if missing:
            raise ArtifactError(f"{directory / files.TRAINABLE} lacks {sorted(missing)}: rerun `compress run`")
        train.load_parameters_(model, trained)
    else:
        model.load_state_dict(trained)
        qweights = build.quantize_model(model, cfg, b.tokenizer, calib)
    return Restored(model.eval(), b.tokenizer, qweights, calib)


def _set_masks(model, path: Path) -> None:
    try:
        masking.set_masks_(model, maskcodec.load_masks(path))
    except (KeyError, ValueError) as e:
        raise ArtifactError(
            f"{path} does not fit the model ({str(e).splitlines()[0]}): it was made for another model; rerun `compress run`"
        ) from None
