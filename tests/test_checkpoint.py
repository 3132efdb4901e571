import random

import numpy as np
import pytest
import torch

from engine.checkpoint import CHECKPOINT_NAME, Checkpointer, get_rng_state, resolve_resume, set_rng_state
from utils.checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint


def draw_everything():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], random.gauss(0, 1)


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.randn()  # and in numpy's
    save_checkpoint({"rng": [get_rng_state()]}, tmp_path / "rng.pth")
    expected = draw_everything()
    draw_everything()
    set_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"][0])
    assert draw_everything() == expected


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint({"epoch": 1}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2}, path)
    assert load_checkpoint(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_unreadable_checkpoint_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_checkpoint(bad)


def test_resolve_resume(tmp_path):
    assert resolve_resume("auto", tmp_path) is None
    assert resolve_resume("none", tmp_path) is None
    save_checkpoint({}, tmp_path / CHECKPOINT_NAME)
    assert resolve_resume("auto", tmp_path) == tmp_path / CHECKPOINT_NAME
    assert resolve_resume("none", tmp_path) is None
    assert resolve_resume(str(tmp_path / CHECKPOINT_NAME), "elsewhere") == tmp_path / CHECKPOINT_NAME
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        resolve_resume(str(tmp_path / "missing.pth"), tmp_path)


def make_training_state(lr=0.1):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [1], 0.1)
    return model, optimizer, scheduler


def train_step(model, optimizer):
    model(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_checkpointer_resumes_model_optimizer_scheduler_and_rng(tmp_path):
    torch.manual_seed(0)
    model, optimizer, scheduler = make_training_state()
    train_step(model, optimizer)
    scheduler.step()
    Checkpointer(tmp_path, model, optimizer, scheduler, config={"lr": 0.1}).save(3, 5, 42, copy_name="epoch002.pth")
    train_step(model, optimizer)
    expected = [t.clone() for t in model.state_dict().values()]

    resumed, optimizer2, scheduler2 = make_training_state(lr=0.5)
    start = Checkpointer(tmp_path, resumed, optimizer2, scheduler2, config={"lr": 0.1}).resume("auto")
    assert (start.epoch, start.iteration, start.global_step) == (3, 5, 42)
    assert scheduler2.last_epoch == 1 and optimizer2.param_groups[0]["lr"] == pytest.approx(0.01)
    train_step(resumed, optimizer2)  # same batch (RNG restored) and momentum buffers
    for a, b in zip(expected, resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert load_checkpoint(tmp_path / "epoch002.pth")["epoch"] == 3


def test_resume_into_a_different_model_is_refused(tmp_path):
    model, optimizer, _ = make_training_state()
    Checkpointer(tmp_path, model, optimizer).save(1, 0, 1)
    other = torch.nn.Linear(4, 2)
    with pytest.raises(CheckpointError, match="--net"):
        Checkpointer(tmp_path, other, torch.optim.SGD(other.parameters(), lr=0.1)).resume("auto")


def test_resume_from_a_foreign_file_names_what_is_missing(tmp_path):
    model, optimizer, _ = make_training_state()
    save_checkpoint({"model": model.state_dict()}, tmp_path / "weights_only.pth")
    with pytest.raises(CheckpointError, match="weights_only.pth lacks optimizer"):
        Checkpointer(tmp_path, model, optimizer).resume(str(tmp_path / "weights_only.pth"))


def test_a_runs_own_state_is_in_every_checkpoint_and_a_resume_restores_it_in_place(tmp_path):
    """finetune.py keeps its best validation so far this way: a resumed run goes on choosing best.pth against it."""
    model, optimizer, _ = make_training_state()
    best = {"val_top1": 42.0, "epoch": 3}
    Checkpointer(tmp_path, model, optimizer, extra={"best": best}).save(4, 0, 40)
    assert load_checkpoint(tmp_path / "checkpoint.pth")["best"] == best
    restored = {"val_top1": float("-inf"), "epoch": -1}  # a fresh run's record, the object its code holds
    Checkpointer(tmp_path, model, optimizer, extra={"best": restored}).resume("auto")
    assert restored == {"val_top1": 42.0, "epoch": 3}
