"""What Hugging Face-style loaders expect of an artifact directory, so that it loads as-is in Optimum's
``ORTModelForSequenceClassification`` + ``pipeline()`` and in Transformers.js (Node and the browser):

    config.json            the encoder's config + ``architectures``, ``id2label`` / ``label2id`` (the task's
                           class names in logit order) and ``problem_type`` ("regression" for STS-B, so that
                           pipeline() reports the raw score instead of a sigmoid)
    tokenizer.json, tokenizer_config.json, ...   the tokenizer, ``model_max_length`` = the artifact's max_length
                           (what the task was trained and evaluated with: a loader that truncates cuts there)
    onnx/model.onnx        the graph, where Transformers.js looks (Optimum finds any *.onnx; one copy of the weights)

The graph's pooling and head are inside the ONNX file; the config only describes its inputs and outputs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from compress import files
from compress.tasks import Task, label_names

log = logging.getLogger(__name__)


def config(encoder_config, task: Task) -> dict:
    """config.json of a sequence classifier: the encoder's own config (a transformers PretrainedConfig, only what differs
    from its class's defaults) plus the task's head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    names = label_names(task)
    arch = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(encoder_config.model_type)
    drop = {
        "architectures",
        "id2label",
        "label2id",
        "num_labels",
        "problem_type",
        "_name_or_path",
        "finetuning_task",
        "torch_dtype",
        "dtype",
        "transformers_version",
        "_attn_implementation_autoset",
    }
    out = {k: v for k, v in encoder_config.to_diff_dict().items() if k not in drop}
    out.update(
        model_type=encoder_config.model_type,
        architectures=[arch] if arch else [],
        finetuning_task=task.name,
        id2label={str(i): n for i, n in enumerate(names)},
        label2id={n: i for i, n in enumerate(names)},
        problem_type="regression" if task.is_regression else "single_label_classification",
    )
    return out


def write(directory: Path, encoder_config, task: Task, max_length: int) -> None:
    """Write config.json and set the saved tokenizer's model_max_length (tokenizer files already in `directory`)."""
    directory = Path(directory)
    (directory / files.HF_CONFIG).write_text(json.dumps(config(encoder_config, task), indent=2, sort_keys=True) + "\n")
    tc = directory / files.TOKENIZER_CONFIG
    if tc.is_file():
        d = json.loads(tc.read_text())
        d["model_max_length"] = max_length
        tc.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    else:
        log.warning("%s has no %s: loaders will not truncate at %d tokens", directory, files.TOKENIZER_CONFIG, max_length)
