"""GLUE tasks: the task table and readers for GLUE-layout TSV directories or the `datasets` library.

GLUE TSVs are read exactly as written: tab-separated, no quoting (MRPC and SST-2 have bare `"`
inside sentences), UTF-8 with an optional byte-order mark (MRPC), one row per `\\n`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from compress.errors import CompressError

log = logging.getLogger(__name__)

DATA_ENV = "GLUE_DIR"


class TaskDataError(CompressError, ValueError):
    """Task data missing or malformed; the message names the file, the row and the fix."""


@dataclass(frozen=True)
class Task:
    name: str
    folder: str
    text_cols: tuple[int, ...]  # column indices of sentence 1 (and 2)
    label_col: int  # -1 = last column
    labels: tuple[str, ...]  # () = regression
    metric: str  # primary metric name
    header: bool = True
    min_cols: int = 2
    dev_splits: tuple[str, ...] = ("dev",)
    hf_columns: tuple[str, ...] = ("sentence",)

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    @property
    def is_regression(self) -> bool:
        return not self.labels


TASKS = {
    "cola": Task("cola", "CoLA", (3,), 1, ("0", "1"), "mcc", header=False, min_cols=4),
    "sst2": Task("sst2", "SST-2", (0,), 1, ("0", "1"), "accuracy", min_cols=2),
    "mrpc": Task("mrpc", "MRPC", (3, 4), 0, ("0", "1"), "f1", min_cols=5, hf_columns=("sentence1", "sentence2")),
    "stsb": Task("stsb", "STS-B", (7, 8), -1, (), "pearson", min_cols=10, hf_columns=("sentence1", "sentence2")),
    "qqp": Task("qqp", "QQP", (3, 4), 5, ("0", "1"), "f1", min_cols=6, hf_columns=("question1", "question2")),
    "mnli": Task(
        "mnli",
        "MNLI",
        (8, 9),
        -1,
        ("contradiction", "entailment", "neutral"),
        "accuracy",
        min_cols=11,
        dev_splits=("dev_matched", "dev_mismatched"),
        hf_columns=("premise", "hypothesis"),
    ),
    "qnli": Task("qnli", "QNLI", (1, 2), -1, ("entailment", "not_entailment"), "accuracy", min_cols=4, hf_columns=("question", "sentence")),
    "rte": Task("rte", "RTE", (1, 2), -1, ("entailment", "not_entailment"), "accuracy", min_cols=4, hf_columns=("sentence1", "sentence2")),
    "wnli": Task("wnli", "WNLI", (1, 2), -1, ("0", "1"), "accuracy", min_cols=4, hf_columns=("sentence1", "sentence2")),
}
ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli"}
# the `datasets` library encodes labels as integers in this order (MNLI: entailment, neutral, contradiction)
# what each class means, in logit order (GLUE's names; the TSV files say 0/1): an app's config.json id2label
LABEL_NAMES = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "wnli": ("not_entailment", "entailment"),
    "stsb": ("similarity",),
}
HF_LABEL_NAMES = {
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
}


def get_task(name: str) -> Task:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise TaskDataError(f"unknown task '{name}': pass one of {', '.join(TASKS)}")
    return TASKS[key]


@dataclass
class Split:
    task: str
    name: str
    text_a: list[str] = field(default_factory=list)
    text_b: list[str] | None = None
    labels: list[float] = field(default_factory=list)  # class index, or the score for regression
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> Split:
        if n is None or n >= len(self):
            return self
        return Split(
            self.task,
            self.name,
            self.text_a[:n],
            None if self.text_b is None else self.text_b[:n],
            self.labels[:n],
            self.source + f" (first {n})",
        )


def read_tsv(path: Path, task: Task, split: str) -> Split:
    """One GLUE TSV file -> Split, raising TaskDataError(file:line) on a malformed row."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # strips MRPC's byte-order mark
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise TaskDataError(f"{path}:{line}: byte {e.start} is not UTF-8 ({e.reason}): save the file as UTF-8") from None
    except OSError as e:
        raise TaskDataError(f"{path} cannot be read ({e.strerror or type(e).__name__}): pass a readable GLUE TSV") from None
    rows = text.split("\n")
    if rows and rows[-1] == "":
        rows.pop()
    out = Split(task.name, split, text_b=[] if len(task.text_cols) == 2 else None, source=str(path))
    for lineno, raw in enumerate(rows, start=1):
        if task.header and lineno == 1:
            continue
        cols = raw.rstrip("\r").split("\t")
        if len(cols) < task.min_cols:
            raise TaskDataError(
                f"{path}:{lineno}: expected at least {task.min_cols} tab-separated columns for {task.name}, "
                f"found {len(cols)}: fix or remove that row"
            )
        raw_label = cols[task.label_col].strip()
        if task.is_regression:
            try:
                label = float(raw_label)
            except ValueError:
                label = math.nan
            if not math.isfinite(label):
                raise TaskDataError(f"{path}:{lineno}: score '{raw_label[:40]}' is not a finite number: fix or remove that row")
        elif raw_label in task.labels:
            label = task.labels.index(raw_label)
        else:
            raise TaskDataError(f"{path}:{lineno}: label '{raw_label[:40]}' is not one of {list(task.labels)}: fix or remove that row")
        out.text_a.append(cols[task.text_cols[0]])
        if out.text_b is not None:
            out.text_b.append(cols[task.text_cols[1]])
        out.labels.append(label)
    if not out.labels:
        raise TaskDataError(f"{path} has no examples: is it the right file?")
    return out


def find_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else None


def _task_dir(root: Path, task: Task) -> Path:
    for cand in (root / task.folder, root / task.name, root):
        if (cand / "train.tsv").is_file():
            return cand
    raise TaskDataError(
        f"no {task.folder}/train.tsv under {root}: pass --data-dir pointing at a GLUE-layout directory "
        f"(DIR/{task.folder}/train.tsv, DIR/{task.folder}/{task.dev_splits[0]}.tsv)"
    )


def load_task(task: Task, data_dir: str | os.PathLike | None = None) -> dict[str, Split]:
    """{'train': Split, 'dev': Split (and 'dev_mismatched' for MNLI)} from a GLUE directory, else `datasets`."""
    root = find_data_dir(data_dir)
    if root is None:
        return _load_hf(task)
    if not root.is_dir():
        raise TaskDataError(f"data directory {root} does not exist: pass --data-dir with the GLUE TSVs (or set {DATA_ENV})")
    d = _task_dir(root, task)
    splits = {"train": read_tsv(d / "train.tsv", task, "train")}
    for i, name in enumerate(task.dev_splits):
        f = d / f"{name}.tsv"
        if not f.is_file():
            raise TaskDataError(f"{f} is missing: the GLUE layout needs {name}.tsv beside train.tsv")
        splits["dev" if i == 0 else name] = read_tsv(f, task, name)
    log.info("read %s: %s", task.name, {k: len(v) for k, v in splits.items()})
    return splits


def _load_hf(task: Task) -> dict[str, Split]:
    try:
        import datasets
    except ImportError:
        raise TaskDataError(
            f"no data for {task.name}: pass --data-dir DIR (GLUE layout, DIR/{task.folder}/train.tsv), "
            f"set {DATA_ENV}, or pip install datasets and go online"
        ) from None
    try:
        ds = datasets.load_dataset("nyu-mll/glue", task.name)
    except Exception as e:
        raise TaskDataError(
            f"could not download GLUE/{task.name} ({type(e).__name__}): pass --data-dir DIR with the GLUE TSVs "
            f"(DIR/{task.folder}/train.tsv) or set {DATA_ENV}"
        ) from e
    hf_splits = {"train": "train", "dev": "validation_matched" if task.name == "mnli" else "validation"}
    if task.name == "mnli":
        hf_splits["dev_mismatched"] = "validation_mismatched"
    hf_names = HF_LABEL_NAMES.get(task.name)
    out = {}
    for ours, theirs in hf_splits.items():
        d = ds[theirs]
        labels = list(d["label"])
        if hf_names:  # re-map to this table's label order
            labels = [task.labels.index(hf_names[i]) for i in labels]
        cols = task.hf_columns
        out[ours] = Split(
            task.name,
            ours,
            list(d[cols[0]]),
            list(d[cols[1]]) if len(cols) == 2 else None,
            [float(x) if task.is_regression else int(x) for x in labels],
            f"datasets:glue/{task.name}/{theirs}",
        )
    return out


def label_names(task: Task) -> tuple[str, ...]:
    """Names of the head's outputs in logit order (a regression head's one output is named too)."""
    return LABEL_NAMES.get(task.name, task.labels or ("score",))
