"""Several tasks of a pack in one app: one copy of the backbone and one arena for all their sessions.

A pack's task graph takes every tensor that is the same in every task from the backbone file (external data:
location, offset, length; compress.exporters.shared). Left to itself, ONNX Runtime maps those bytes separately
for each session (each mapping's pages count again in the process's resident memory) and gives each session its
own memory arena, which grows to the largest batch that session has run. ``SharedWeights`` maps the file once,
read-only, and hands each session views of that one map (``SessionOptions.add_initializer``: ONNX Runtime uses
the buffer as it is, no copy): the word-embedding table's packed codes, gathered row by row at run time, are
resident once however many tasks are open. ``open_session(shared_arena=True)`` makes the sessions allocate from
one arena registered with ONNX Runtime's environment (``session.use_env_allocators``). What a session folds at
load (its masked int8 linears) stays its own: the masks differ.

The pack writer records where each shared initializer lies (``placements``, in PackTask.shared_tensors), so that
an app needs no ONNX parser: numpy and onnxruntime only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from compress import manifest as mf

log = logging.getLogger(__name__)


def placements(graph: Path, shared_file: str) -> dict[str, mf.SharedTensor]:
    """The graph's initializers that are plain views of bytes in `shared_file` (its external data), by name."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    out = {}
    for init in onnx.load(str(graph), load_external_data=False).graph.initializer:
        ext = {e.key: e.value for e in init.external_data}
        if init.data_location != onnx.TensorProto.EXTERNAL or Path(ext.get("location", "")).name != shared_file:
            continue
        dtype = np.dtype(tensor_dtype_to_np_dtype(init.data_type))
        length = int(ext.get("length", -1))
        if length == dtype.itemsize * int(np.prod(init.dims)):
            out[init.name] = mf.SharedTensor(int(ext.get("offset", 0)), length, dtype.name, list(init.dims))
    return out


class SharedWeights:
    """The shared file mapped once, read-only; ``initializers(placements)`` -> {name: OrtValue viewing the map}."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.map = np.memmap(self.path, dtype=np.uint8, mode="r")

    def initializers(self, tensors: dict[str, mf.SharedTensor]) -> dict:
        """OrtValues over the map (each holds its view, which holds the map: open_session keeps them with the session, since
        ONNX Runtime does not own them). A placement outside the file is skipped: ONNX Runtime reads that tensor itself."""
        import onnxruntime as ort

        out = {}
        for name, t in tensors.items():
            if t.offset + t.length <= self.map.size:
                view = self.map[t.offset : t.offset + t.length].view(np.dtype(t.dtype)).reshape(tuple(t.shape))
                out[name] = ort.OrtValue.ortvalue_from_numpy(view)
        return out
