import pytest

from compress import tasks
from compress.tasks import TaskDataError


def test_quirky_rows_read_exactly(mini_glue):
    splits = tasks.load_task(tasks.get_task("mrpc"), mini_glue)
    train, dev = splits["train"], splits["dev"]
    assert len(train) == 24 and len(dev) == 12  # BOM header skipped; last row without newline kept
    assert train.text_a[0] == 'He said " the witness " was 0 .'  # bare quotes are text, not CSV quoting
    assert train.text_b[3] == 'The "witness" number 3 spoke .'
    assert train.labels[:4] == [0, 1, 0, 1]


def test_real_glue_counts(glue_dir):
    expected = {"mrpc": (3667, 408), "sst2": (67349, 872), "cola": (8551, 1043), "stsb": (5749, 1500), "wnli": (635, 71)}
    for name, (n_train, n_dev) in expected.items():
        s = tasks.load_task(tasks.get_task(name), glue_dir)
        assert (len(s["train"]), len(s["dev"])) == (n_train, n_dev), name
    stsb = tasks.load_task(tasks.get_task("stsb"), glue_dir)["dev"]
    assert stsb.labels[0] == 5.0 and stsb.text_a[0] == "A man with a hard hat is dancing."
    cola = tasks.load_task(tasks.get_task("cola"), glue_dir)["train"]
    assert cola.text_b is None and cola.text_a[0].startswith("Our friends won't buy this analysis")


def test_malformed_row_names_file_and_line(mini_glue):
    f = mini_glue / "MRPC" / "train.tsv"
    f.write_text(f.read_text() + "1\tonly three\tcolumns\n")
    with pytest.raises(TaskDataError, match=r"train\.tsv:26: expected at least 5"):
        tasks.load_task(tasks.get_task("mrpc"), mini_glue)


def test_bad_label(mini_glue):
    f = mini_glue / "MRPC" / "dev.tsv"
    f.write_text(f.read_text() + "\n7\t1\t2\ta\tb\n")
    with pytest.raises(TaskDataError, match=r"dev\.tsv:14: label '7'"):
        tasks.load_task(tasks.get_task("mrpc"), mini_glue)


def test_missing_files_and_unknown_task(tmp_path, mini_glue):
    with pytest.raises(TaskDataError, match="does not exist"):
        tasks.load_task(tasks.get_task("mrpc"), tmp_path / "nope")
    with pytest.raises(TaskDataError, match=r"no CoLA/train\.tsv"):
        tasks.load_task(tasks.get_task("cola"), mini_glue)
    (mini_glue / "MRPC" / "dev.tsv").unlink()
    with pytest.raises(TaskDataError, match=r"dev\.tsv is missing"):
        tasks.load_task(tasks.get_task("mrpc"), mini_glue)
    with pytest.raises(TaskDataError, match="unknown task 'foo'"):
        tasks.get_task("foo")
    assert tasks.get_task("SST-2").name == "sst2"


def test_all_nine_tasks_defined():
    assert set(tasks.TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert tasks.get_task("stsb").is_regression and tasks.get_task("mnli").num_labels == 3
