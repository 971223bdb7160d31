"""`compress materialize PACK TASK --out DIR`: one task of a pack written back as a standalone artifact.

The graph gets the shared tensors written into it (no external data), the tokenizer and config.json are
copied or made, mask.npz and trainable.safetensors are recovered from the task graph (its coded masks and
head, by name), and the manifest is the task's artifact manifest as it was packed, marked as materialized.
Its logits equal the pack's.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from compress import files, maskcodec, staging
from compress import manifest as mf
from compress.pack_writer import PackError, logits_parity

log = logging.getLogger(__name__)


def materialize(
    pack_dir: str | Path, task: str, out: str | Path, overwrite: bool = False, command: str = "", prefold: bool = False
) -> tuple[Path, mf.ArtifactManifest]:
    """A standalone artifact of one task of a pack (see the module docstring); prefold: its constant subgraphs folded here
    (``fold_constants``), so that loading it folds nothing."""
    import onnx

    from compress import report
    from compress.runtimes.bench import sample

    pack_dir, out = Path(pack_dir), Path(out)
    pm = mf.read(pack_dir, mf.PackManifest)
    if task not in pm.tasks:
        raise PackError(f"{pack_dir} has no task {task!r}: it holds {', '.join(pm.tasks)}")
    staging.check_target(out, overwrite)
    t = pm.tasks[task]
    where = pack_dir / files.task_manifest(task)
    m = mf.parse(json.loads(gzip.decompress(where.read_bytes())), mf.ArtifactManifest, where, listed=False)
    with staging.staging(out, overwrite) as tmp:
        model = onnx.load(str(pack_dir / t.onnx), load_external_data=True)
        for init in model.graph.initializer:
            init.data_location = onnx.TensorProto.DEFAULT
            del init.external_data[:]
        graph = tmp / files.GRAPH
        graph.parent.mkdir()
        onnx.save(model, str(graph))
        if prefold:
            fold_constants(graph)
        for name in files.TOKENIZER_FILES:
            if (pack_dir / name).is_file():
                shutil.copy2(pack_dir / name, tmp / name)
        _hf_config(tmp, m)
        _recover(model, m, tmp)
        source = mf.MaterializedFrom(str(pack_dir.resolve()), mf.manifest_sha256(pack_dir), task)
        m = m.materialized(
            source=source,
            onnx_total=graph.stat().st_size,
            mask_bytes=(tmp / files.MASKS).stat().st_size,
            mask_sha256=maskcodec.mask_sha256(maskcodec.load_masks(tmp / files.MASKS)),
            pack_max_abs_diff=logits_parity(graph, pack_dir / t.onnx, sample()),
            command=command,
            prefold=prefold,
        )
        (tmp / files.REPORT).write_text(report.render(m))
        m = mf.write(tmp, m)
    return out, m


def fold_constants(graph: Path) -> None:
    """Rewrite the graph with its constant subgraphs folded (the shared codes unpacked, masked and re-rounded into the int8
    weights ONNX Runtime's kernels take), by ONNX Runtime's basic optimizations: constant folding and redundant-node removal,
    which run before any provider is chosen, so the graph stays one every provider loads. Loading it then folds nothing: no
    transient memory, at the int8 weights' size on disk (as `compress export --prefold`). The word embeddings stay packed."""
    import onnxruntime as ort

    from compress.exporters import verify

    folded = graph.with_name(graph.stem + ".folded.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(folded)
    so.log_severity_level = 3
    ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
    verify.check_graph(folded)
    folded.replace(graph)


def _hf_config(out: Path, m: mf.ArtifactManifest) -> None:
    """config.json (compress.hf_layout) from the base model's config, where it can be read (the embedded model, a local
    directory, the hub when online); without it the artifact still serves compress and ONNX Runtime."""
    from transformers import AutoConfig

    from compress import hf_layout, models, tasks

    location = str(models.embedded_dir()) if m.model.name == models.EMBEDDED else m.model.location
    try:
        encoder_config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as e:
        log.warning("no config.json for Hugging Face loaders: cannot read the config of %s (%s)", location, e)
        return
    hf_layout.write(out, encoder_config, tasks.get_task(m.task.name), m.config.train.max_length)


def _recover(model, m: mf.ArtifactManifest, out: Path) -> None:
    """mask.npz and trainable.safetensors from a pack's task graph (its coded masks and head, by name).

    Dropped FFN neurons and attention heads: their columns of the second (output) projection are pruned, as in the
    original; their rows of the first (Q/K/V) projections are left unpruned (the original's are not in the pack;
    either way the unit is dead and leaves the exported graph)."""
    from onnx import numpy_helper
    from safetensors.numpy import save_file

    inits = {i.name: i for i in model.graph.initializer}
    maskcodec.write_masks(out / files.MASKS, _masks(inits, m))
    head = {}
    for key in _head_names(m):
        if key not in inits:
            raise PackError(f"the pack's graph of {m.task.name} has no tensor {key}: it was not written by `compress pack`")
        head[key] = np.ascontiguousarray(numpy_helper.to_array(inits[key]))
    save_file(head, str(out / files.TRAINABLE))


def _masks(inits: dict, m: mf.ArtifactManifest) -> dict[str, np.ndarray]:
    """Every masked linear's mask, decoded from the task graph's coded masks and kept-neuron / head-channel indices."""
    from onnx import numpy_helper

    from compress.exporters.shared import tensor_name

    arr = lambda n: numpy_helper.to_array(inits[n])
    shapes = {r.name: tuple(r.shape) for r in m.layers if r.masked}
    role = _roles(m, shapes, inits)
    masks = {}
    for name, shape in shapes.items():
        axis, second, unit = role.get(name, (None, None, None))
        kept = arr(tensor_name(second, f"{unit}_kept")).astype(np.int64) if axis is not None else None
        sub = shape if axis is None else (kept.size, shape[1]) if axis == 0 else (shape[0], kept.size)
        part = _mask(inits, name, int(np.prod(sub))).reshape(sub)
        if axis is None:
            masks[name] = part
        elif axis == 1:  # the second projection: the columns of dropped and padding units are pruned
            alive_name = tensor_name(second, f"{unit}_alive")
            alive = arr(alive_name).astype(bool) if alive_name in inits else np.ones(kept.size, bool)
            masks[name] = np.zeros(shape, bool)
            masks[name][:, kept] = part & alive[None, :]
        else:
            masks[name] = np.ones(shape, bool)
            masks[name][kept] = part
    return masks


def _roles(m: mf.ArtifactManifest, shapes: dict, inits: dict) -> dict[str, tuple[int, str, str]]:
    """Projection -> (axis of its kept units, the projection whose tensor names them, the unit): an FFN's neurons, an
    attention's head channels (a pack written before heads left its task graphs has no such tensor: every row is there)."""
    from compress.exporters.neurons import pairs
    from compress.exporters.shared import tensor_name
    from compress.masking import attention_of

    role = {}
    for second in m.ffn_neurons:
        for first, sec in pairs(shapes, shapes[second][1]):
            if sec == second:
                role[first], role[second] = (0, second, "neurons"), (1, second, "neurons")
    for output in m.attention_heads:
        if (found := attention_of(output)) is not None and tensor_name(output, "channels_kept") in inits:
            role.update(dict.fromkeys(found[1], (0, output, "channels")))
            role[output] = (1, output, "channels")
    return role


def _mask(inits: dict, name: str, size: int) -> np.ndarray:
    """A linear's flat mask from its coded initializers in a task graph (all kept if it has none)."""
    from onnx import numpy_helper

    from compress.exporters.shared import tensor_name

    bits = tensor_name(name, "mask_bits")
    if bits in inits:
        return maskcodec.mask_decode("bits", numpy_helper.to_array(inits[bits]), False, size)
    for rare in (0, 1):
        if (rice := tensor_name(name, f"mask_rice{rare}")) in inits:
            return maskcodec.mask_decode("rice", maskcodec.RiceCode.from_bytes(numpy_helper.to_array(inits[rice])), bool(rare), size)
    return np.ones(size, bool)


def _head_names(m: mf.ArtifactManifest) -> list[str]:
    names = ["classifier.weight", "classifier.bias"]
    if m.model.pooling == "pooler":
        names += ["encoder.pooler.dense.weight", "encoder.pooler.dense.bias"]
    return names
