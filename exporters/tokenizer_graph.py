"""An artifact's graph with the tokenizer inside: raw strings in, logits out (``compress export DIR --with-tokenizer``).

onnxruntime-extensions turns the artifact's Hugging Face tokenizer into a BERT tokenizer custom op
(``gen_processing_models`` gives its vocabulary and settings), spliced in front of the shipped graph:

    text [1] (, text_pair [1]) -> Concat -> HfBertTokenizer (one text: BertTokenizer) -> input_ids,
        attention_mask, token_type_ids -> [1, n] -> first max_length tokens -> the artifact's graph -> logits [1, labels]

Measured on the MRPC dev pairs (onnxruntime-extensions 0.13-0.15.2): the ``BertTokenizer`` op that
``gen_processing_models`` emits keeps state between runs (the same pair run twice in one session comes
back with its first ids zeroed: 15 of 408 pairs differ when the dev set is run in order), and it is
given ``strip_accents=0`` where the Hugging Face tokenizer strips accents when it lowercases
("Misérables"); ``HfBertTokenizer`` with accents stripped as the tokenizer does matches tokenizer.json
on every pair, run after run. HfBertTokenizer takes exactly two strings, so one text goes through
BertTokenizer (accents stripped alike; the state bug was not seen on single texts: SST-2 and CoLA dev, twice over). The op takes one
sequence (a pair as a string tensor of 2) and does not batch, so the
graph classifies one text (or pair) per run. It does not truncate, so the graph keeps the first
max_length tokens itself: equal to the two-step path (tokenizers + model.onnx) whenever an input fits
in max_length tokens; a longer input loses its tail (and its last [SEP]) where the tokenizer would
truncate the longer of the two texts. Running it needs onnxruntime-extensions' custom-op library
registered in the session (``ort_session``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from compress import files
from compress.errors import CompressError

log = logging.getLogger(__name__)
DOMAIN = "ai.onnx.contrib"
FILE = Path(files.GRAPH_WITH_TOKENIZER).name  # beside the artifact's onnx/model.onnx (Optimum and Transformers.js pick model.onnx)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TokenizerGraphError(CompressError, RuntimeError):
    """The tokenizer cannot be put in the graph, or the result does not predict like the two-step path."""


def _tokenizer_node(tokenizer_dir: Path, pair: bool) -> onnx.NodeProto:
    """onnxruntime-extensions' tokenizer node for the artifact's tokenizer (its vocabulary inside): HfBertTokenizer for
    pairs (it takes exactly two strings), BertTokenizer for one text."""
    from transformers import AutoTokenizer

    try:
        from onnxruntime_extensions import gen_processing_models
    except ImportError as e:
        raise TokenizerGraphError(
            "--with-tokenizer needs onnxruntime-extensions: pip install onnxruntime-extensions (or pip install 'compress-encoders[cli]')"
        ) from e

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    try:
        pre = gen_processing_models(tok, pre_kwargs={})[0]
    except Exception as e:  # onnxruntime-extensions raises plain Exceptions for tokenizers it cannot convert
        raise TokenizerGraphError(
            f"{tokenizer_dir}: onnxruntime-extensions cannot put a {type(tok).__name__} in the graph ({e}); "
            "ship the graph without --with-tokenizer and tokenize in the app"
        ) from e
    nodes = [n for n in pre.graph.node if n.domain == DOMAIN]
    if len(nodes) != 1 or nodes[0].op_type != "BertTokenizer":
        raise TokenizerGraphError(
            f"{tokenizer_dir}: only BERT WordPiece tokenizers go in the graph (got {[n.op_type for n in nodes]}); "
            "ship the graph without --with-tokenizer"
        )
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
    lower = bool(attrs.get("do_lower_case", 0))
    strip = tok.init_kwargs.get("strip_accents")
    outputs = (
        ["tok/input_ids", "tok/attention_mask", "tok/token_type_ids"]
        if pair
        else ["tok/input_ids", "tok/token_type_ids", "tok/attention_mask", "tok/offsets"]
    )
    op = "HfBertTokenizer" if pair else "BertTokenizer"
    return helper.make_node(
        op,
        ["tok/text"],
        outputs,
        domain=DOMAIN,
        name=f"tok/{op}",
        vocab_file=attrs["vocab_file"],
        do_lower_case=int(lower),
        strip_accents=int(lower if strip is None else bool(strip)),
    )  # None: as lowercasing


def build(graph: Path, tokenizer_dir: Path, pair: bool, max_length: int) -> onnx.ModelProto:
    """The artifact's graph with string inputs `text` (and `text_pair`)."""
    model = onnx.load(str(graph))
    g = model.graph
    feeds = [i.name for i in g.input]
    if not set(feeds) <= set(INPUTS):
        raise TokenizerGraphError(f"{graph}: inputs {feeds} are not a subset of {INPUTS}")
    texts = ["text", "text_pair"] if pair else ["text"]
    nodes = (
        [helper.make_node("Concat", texts, ["tok/text"], axis=0, name="tok/concat")]
        if pair
        else [helper.make_node("Identity", ["text"], ["tok/text"], name="tok/text")]
    )
    nodes.append(_tokenizer_node(tokenizer_dir, pair))
    consts = [
        helper.make_tensor("tok/row", TensorProto.INT64, [2], [1, -1]),
        helper.make_tensor("tok/start", TensorProto.INT64, [1], [0]),
        helper.make_tensor("tok/end", TensorProto.INT64, [1], [max_length]),
        helper.make_tensor("tok/axis", TensorProto.INT64, [1], [1]),
    ]
    for name in feeds:
        row = helper.make_node("Reshape", [f"tok/{name}", "tok/row"], [f"tok/{name}_row"], name=f"tok/reshape_{name}")
        nodes += [row, helper.make_node("Slice", [f"tok/{name}_row", "tok/start", "tok/end", "tok/axis"], [name], name=f"tok/slice_{name}")]
    old_nodes = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old_nodes)
    g.initializer.extend(consts)
    del g.input[:]
    g.input.extend(helper.make_tensor_value_info(t, TensorProto.STRING, [1]) for t in texts)
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model


def ort_session(model: str | Path | bytes):
    """An ONNX Runtime session with onnxruntime-extensions' custom ops registered."""
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    so = ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    so.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so, providers=["CPUExecutionProvider"])


def logits(sess, text_a: list[str], text_b: list[str] | None) -> np.ndarray:
    """One run per text (or pair): the op does not batch."""
    out = []
    for i, a in enumerate(text_a):
        feed = {"text": np.array([a], dtype=object)}
        if text_b is not None:
            feed["text_pair"] = np.array([text_b[i]], dtype=object)
        out.append(sess.run(["logits"], feed)[0])
    return np.concatenate(out)


def write(
    graph: Path,
    tokenizer_dir: Path,
    out: Path,
    pair: bool,
    max_length: int,
    check_texts: tuple[list[str], list[str] | None],
    atol: float = 1e-4,
) -> float:
    """Build, save and verify against the two-step path (the artifact's tokenizer.json + graph) on check_texts.
    Returns the max |logit difference| to it."""
    from compress.exporters.verify import check_graph
    from compress.runtimes import evaluate
    from compress.runtimes.session import open_session

    model = build(graph, tokenizer_dir, pair, max_length)
    check_graph(model)
    onnx.save(model, str(out))
    text_a, text_b = check_texts
    got = logits(ort_session(out), text_a, text_b)
    ref = evaluate.texts_logits(open_session(graph), tokenizer_dir / files.TOKENIZER, max_length, text_a, text_b, batch_size=1)
    diff = float(np.abs(got - ref).max())
    if not np.isfinite(diff) or diff > atol:
        raise TokenizerGraphError(
            f"{out}: logits differ from the two-step path (tokenizer.json + {graph.name}) by {diff:.3g} > {atol}: "
            "the in-graph tokenizer does not tokenize like tokenizer.json; ship without --with-tokenizer"
        )
    log.info("wrote %s (%.2f MB), max abs logit diff to the two-step path %.2g", out, out.stat().st_size / 1e6, diff)
    return diff
