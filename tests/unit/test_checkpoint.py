"""compress.checkpoint + train.fit: a stopped run continues to the same mask; other settings are refused."""

import copy
import dataclasses
import os
import signal

import pytest
import torch

from compress import checkpoint, masking, tasks, train
from compress.checkpoint import Checkpointer, CheckpointError, CheckpointSettings, Interrupted, TrainData
from compress.configs import CheckpointConfig, MaskConfig, QuantConfig, TrainConfig
from compress.errors import ConfigError


@pytest.fixture()
def mrpc(mini_glue):
    task = tasks.get_task("mrpc")
    return task, tasks.load_task(task, mini_glue)


SETTINGS = CheckpointSettings("tiny", "mrpc", None, QuantConfig(), MaskConfig(), TrainConfig(), None, None, TrainData(24, "0" * 64), 1)


class StopAt(Checkpointer):
    """Asks to stop at one step, as SIGINT would, or sends itself a real signal there."""

    def __init__(self, directory, at: int, sig: int | None = None, **kw):
        super().__init__(directory, SETTINGS, CheckpointConfig(**kw))
        self.at, self.sig = at, sig

    def due(self, step: int) -> bool:
        if step == self.at:
            if self.sig is None:
                self.stop_requested = True
            else:
                os.kill(os.getpid(), self.sig)  # the handler installed by fit() sets stop_requested
        return super().due(step)


def _model(tiny_classifier, mode, mask_cfg):
    clf = copy.deepcopy(tiny_classifier[0])
    if mode == "structure":
        torch.manual_seed(0)
        masking.apply_masks_(clf, mask_cfg)
    return clf


def _fit(tiny_classifier, mrpc, ckpt=None, mode="structure", mask_cfg=MaskConfig(ffn_keep=0.5)):
    clf = _model(tiny_classifier, mode, mask_cfg)
    task, splits = mrpc
    cfg = TrainConfig(mode=mode, epochs=3, batch_size=8, max_length=32, head_warmup_steps=2)  # 3 steps per epoch
    return clf, train.fit(clf, task, splits["train"], splits["dev"], tiny_classifier[1], cfg, checkpoint=ckpt)


def _fingerprint(clf, mode):
    if mode == "structure":
        return masking.model_mask_sha256(clf), clf.head_parameters()
    return None, clf.state_dict()


@pytest.mark.parametrize("mode,stops", [("structure", (2, 4, 7)), ("weights", (5,))])
def test_stopped_and_resumed_equals_uninterrupted(tiny_classifier, mrpc, tmp_path, mode, stops):
    ref_model, ref = _fit(tiny_classifier, mrpc, mode=mode)
    want_hash, want = _fingerprint(ref_model, mode)
    for at in stops:  # mid-epoch (2, 4, 7) and an epoch's last step (saved after the dev pass: 3, 6); dropout is on
        with pytest.raises(Interrupted, match=f"step {at}"):
            _fit(tiny_classifier, mrpc, StopAt(tmp_path / "w", at), mode=mode)
        saved = torch.load(tmp_path / "w" / checkpoint.FILE, weights_only=True)
        assert saved["step"] == at
    clf, res = _fit(tiny_classifier, mrpc, Checkpointer(tmp_path / "w", SETTINGS, CheckpointConfig(every=1)), mode=mode)
    got_hash, got = _fingerprint(clf, mode)
    assert got_hash == want_hash
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert [h.loss for h in res.history] == [h.loss for h in ref.history] and res.best_epoch == ref.best_epoch
    assert (tmp_path / "w" / checkpoint.FILE).is_file()  # kept until the artifact is published (compress.run removes it)


def test_a_real_signal_saves_then_stops(tiny_classifier, mrpc, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted):
        _fit(tiny_classifier, mrpc, StopAt(tmp_path / "w", 4, signal.SIGTERM, every=0))
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is removed again
    assert torch.load(tmp_path / "w" / checkpoint.FILE, weights_only=True)["step"] == 4


def test_after_training_a_rerun_does_not_train_again(tiny_classifier, mrpc, tmp_path):
    _fit(tiny_classifier, mrpc, Checkpointer(tmp_path / "w", SETTINGS, CheckpointConfig(every=0)))
    state = torch.load(tmp_path / "w" / checkpoint.FILE, weights_only=True)
    assert state["epoch"] == 4 and state["step"] == 9  # saved after the last epoch (an export that fails keeps the training)
    _, res = _fit(tiny_classifier, mrpc, Checkpointer(tmp_path / "w", SETTINGS))
    assert len(res.history) == 3


def test_other_settings_or_a_damaged_file_are_refused(tmp_path):
    (tmp_path / "w").mkdir()
    torch.save({"version": checkpoint.VERSION, "settings": dataclasses.asdict(SETTINGS), "step": 1}, tmp_path / "w" / checkpoint.FILE)
    other = dataclasses.replace(SETTINGS, train=TrainConfig(mask_lr=0.004))
    with pytest.raises(CheckpointError, match=r"train\.mask_lr: checkpoint 0\.002, this run 0\.004.*--restart"):
        Checkpointer(tmp_path / "w", other).restore()
    assert Checkpointer(tmp_path / "w", other, CheckpointConfig(resume="restart")).restore() is None
    assert not (tmp_path / "w").exists()  # discarded
    with pytest.raises(CheckpointError, match="no checkpoint.*without --resume"):
        Checkpointer(tmp_path / "w", SETTINGS, CheckpointConfig(resume="require")).restore()
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / checkpoint.FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read.*--restart"):
        Checkpointer(tmp_path / "w", SETTINGS).restore()
    with pytest.raises(ConfigError, match="every -1"):
        CheckpointConfig(every=-1)
    (tmp_path / "w" / checkpoint.FILE).unlink()
    torch.save(
        {"version": checkpoint.VERSION, "settings": {"train": {"mask_lr": 0.002}, "model": "tiny"}, "step": 1},
        tmp_path / "w" / checkpoint.FILE,
    )  # settings of a shape this compress does not write
    with pytest.raises(CheckpointError, match="records settings this compress does not know.*--restart"):
        Checkpointer(tmp_path / "w", SETTINGS).restore()


def test_a_checkpoint_holds_the_files_keys_and_reads_back_as_it_was(tiny_classifier, mrpc, tmp_path):
    """The training state is one dataclass, written and read in one place; the file keeps the keys version 1 had."""
    with pytest.raises(Interrupted):
        _fit(tiny_classifier, mrpc, StopAt(tmp_path / "w", 4))
    raw = torch.load(tmp_path / "w" / checkpoint.FILE, weights_only=True)
    assert set(raw) == {
        "version",
        "settings",
        "step",
        "epoch",
        "batch",
        "order",
        "losses",
        "history",
        "best_epoch",
        "best_metric",
        "best_state",
        "seconds",
        "trainable",
        "optimizer",
        "scheduler",
        "rng",
    }
    state = Checkpointer(tmp_path / "w", SETTINGS).restore()
    assert (state.progress.step, state.progress.epoch, state.progress.batch) == (4, 2, 1) and len(state.progress.history) == 1
    assert state.to_file().keys() == raw.keys() - {"version", "settings"}
