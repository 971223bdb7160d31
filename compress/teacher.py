"""The teacher of a distilled run: the dense fine-tuned model of the same task (an artifact of `compress run --mode weights`).

``load`` checks that the teacher fits the student (a `--mode weights` artifact of the same task and the same model, so the
same tokenizer, layers and hidden size) and rebuilds its fp32 weights from trainable.safetensors, the fine-tuned weights
before post-training quantization. ``Teacher.soft_targets`` runs it once over the training set (in eval mode its logits do
not change between epochs, so the logit loss costs one forward pass in all); ``Teacher.hidden_states`` runs it per batch,
which the layerwise loss needs (an epoch's hidden states do not fit in memory at any useful size).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from compress import files
from compress import manifest as mf
from compress.configs import DistillConfig, QuantConfig
from compress.errors import ArtifactError

log = logging.getLogger(__name__)


class TeacherError(ArtifactError):
    """A teacher artifact that cannot teach this run."""


@dataclass
class Teacher:
    model: torch.nn.Module  # models.SequenceClassifier, fp32, eval mode, frozen
    ref: mf.TeacherRef
    config: DistillConfig

    @torch.no_grad()
    def soft_targets(self, enc: dict, pad_id: int, device: torch.device) -> torch.Tensor:
        """The teacher's logits for every encoded example, in order, on `device` (fp32)."""
        from compress import train

        self.model.to(device)
        return torch.from_numpy(train.predict(self.model, enc, pad_id, batch_size=64, bf16=False)).to(device)

    @torch.no_grad()
    def hidden_states(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The teacher's layer outputs for one batch, in layer order."""
        from compress.train import layer_outputs

        with layer_outputs(self.model) as out:
            self.model(**batch)
        return out


def load(cfg: DistillConfig, task_name: str, student_model: str) -> Teacher:
    """The teacher of `cfg`, checked against the student it teaches."""
    from compress import restore

    path = Path(cfg.teacher)
    m = mf.read(path, mf.ArtifactManifest)  # every file's SHA-256 verified
    if m.config.train.mode != "weights":
        raise TeacherError(
            f"--teacher {path} learned a mask (--mode {m.config.train.mode}): a teacher is a `compress run --mode weights` artifact"
        )
    if m.task.name != task_name:
        raise TeacherError(f"--teacher {path} was fine-tuned on {m.task.name}, not {task_name}: use a teacher of the same task")
    if m.model.name != student_model:
        raise TeacherError(
            f"--teacher {path} is a fine-tuned {m.model.name}, the student is {student_model}: they must share the tokenizer"
        )
    rc = dataclasses.replace(restore.config_from_manifest(m), quant=QuantConfig(bits=32))
    model = restore.restore(path, m, rc).model  # the fine-tuned fp32 weights (restore quantizes nothing at 32 bits)
    for p in model.parameters():
        p.requires_grad_(False)
    ref = mf.TeacherRef(m.files[files.TRAINABLE].sha256, str(path.resolve()), m.metrics.torch.get(m.task.metric))
    log.info("teacher %s: %s, dev %s %s", path, m.model.name, m.task.metric, ref.dev_metric)
    return Teacher(model.eval(), ref, cfg)
