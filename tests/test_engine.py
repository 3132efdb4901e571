import copy
import json

import pytest
import torch

from engine.interrupts import NonFiniteLossError
from engine.loop import epoch_lengths, epoch_loader, iterations_per_epoch, train_one_epoch, weighted_loss
from engine.run_log import MetricLogger, RunLogger, SmoothedValue
from utils import precision
from utils.precision import autocast, check_amp, make_grad_scaler

CPU = torch.device("cpu")


class FakeDataset(torch.utils.data.Dataset):
    """Items are a pure function of (epoch, index), as the real datasets promise."""

    def __init__(self, size=10):
        self.size, self.epoch = size, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        g = torch.Generator().manual_seed(self.epoch * 1000 + index)
        return {"clips": torch.randn(2, 4, generator=g), "index": index, "label": -1}


class FakeMethod(torch.nn.Module):
    """Two loss terms and a metric; uses the global RNG inside forward like the SR permutations do."""

    def __init__(self, weight_b=0.5):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.loss_weights = {"loss_a": 1.0, "loss_b": weight_b}

    def forward(self, clips):  # (B, 2, 4)
        noise = torch.randn(clips.shape[0], 1, 4)
        y = self.linear(clips + noise)
        return {"loss_a": y.pow(2).mean(), "loss_b": y.abs().mean(), "acc_x": (y > 0).float().mean()}


def forward(model, batch):
    return model(batch["clips"])


def run_epoch(model, dataset, epoch, start_iter=0, num_iters=None, **kwargs):
    optimizer = kwargs.pop("optimizer", None) or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = epoch_loader(dataset, batch_size=2, workers=0, seed=7, epoch=epoch, start_iter=start_iter)
    num_iters = num_iters or iterations_per_epoch(dataset, 2)
    return train_one_epoch(model, loader, optimizer, forward_fn=forward, loss_weights=model.loss_weights,
                           epoch=epoch, num_iters=num_iters, start_iter=start_iter, device=CPU, **kwargs)


def batch_indices(dataset, epoch, start_iter):
    loader = epoch_loader(dataset, batch_size=2, workers=0, seed=7, epoch=epoch, start_iter=start_iter)
    return [b["index"].tolist() for b in loader]


def test_loader_order_depends_on_seed_and_epoch_and_skips_whole_batches():
    dataset = FakeDataset(10)
    full = batch_indices(dataset, epoch=3, start_iter=0)
    assert len(full) == 5 and sorted(sum(full, [])) == list(range(10))
    assert batch_indices(dataset, epoch=3, start_iter=2) == full[2:]
    assert batch_indices(dataset, epoch=4, start_iter=0) != full
    assert batch_indices(dataset, epoch=3, start_iter=5) == []


def test_loader_does_not_consume_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    list(epoch_loader(FakeDataset(6), batch_size=2, workers=1, seed=7, epoch=0))
    assert torch.equal(torch.rand(1), expected)


def test_weighted_loss_sums_the_weighted_terms_and_requires_every_weight():
    out = {"loss_a": torch.tensor(2.0), "loss_b": torch.tensor(3.0), "acc": torch.tensor(0.5)}
    assert weighted_loss(out, {"loss_a": 1.0, "loss_b": 0.5}).item() == pytest.approx(3.5)
    with pytest.raises(ValueError, match="loss_b"):
        weighted_loss(out, {"loss_a": 1.0})


def test_train_one_epoch_updates_logs_and_saves_mid_epoch(tmp_path):
    torch.manual_seed(0)
    model = FakeMethod()
    before = model.linear.weight.detach().clone()
    saves = []
    logger = RunLogger(tmp_path)
    stats, step = run_epoch(model, FakeDataset(10), epoch=0, global_step=3, logger=logger, log_every=1,
                            save_every_iters=2, save_fn=lambda *a: saves.append(a))
    logger.close()
    assert step == 3 + 5
    assert saves == [(0, 2, 5), (0, 4, 7)]  # not after the last iteration: the caller saves the epoch
    assert not torch.equal(before, model.linear.weight)
    assert set(stats) >= {"loss", "loss_a", "loss_b", "acc_x", "lr", "samples_per_s"}
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [0, 1, 2, 3, 4]
    assert lines[0]["loss"] == pytest.approx(lines[0]["loss_a"] + 0.5 * lines[0]["loss_b"], rel=1e-5)


def test_mid_epoch_restart_replays_the_same_iterations():
    dataset = FakeDataset(12)
    torch.manual_seed(0)
    model = FakeMethod()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = {}

    def snapshot(epoch, done, step):
        state.update(model=[t.clone() for t in model.state_dict().values()], rng=torch.get_rng_state(),
                     optimizer=copy.deepcopy(optimizer.state_dict()), done=done)

    run_epoch(model, dataset, 0, optimizer=optimizer, save_every_iters=4, save_fn=snapshot)
    expected = model.linear.weight.detach().clone()

    resumed = FakeMethod()
    resumed.load_state_dict(dict(zip(resumed.state_dict(), state["model"])))
    optimizer2 = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    optimizer2.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    run_epoch(resumed, dataset, 0, start_iter=state["done"], optimizer=optimizer2)
    torch.testing.assert_close(resumed.linear.weight, expected, rtol=0, atol=0)


def test_non_finite_loss_names_the_iteration_and_terms_and_updates_nothing():
    torch.manual_seed(0)
    model = FakeMethod(weight_b=float("inf"))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, iteration 1 .*loss=inf, loss_a=.*, loss_b="):
        run_epoch(model, FakeDataset(10), epoch=2, start_iter=1)
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)


def test_amp_flags(monkeypatch):
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA device"):
        check_amp("fp16", CPU)
    with pytest.raises(ValueError, match="--amp fp32"):
        check_amp("fp32", CPU)
    monkeypatch.setattr(precision, "cpu_bf16_conv3d_grad_is_right", lambda: True)  # as on an AVX2 CPU
    assert not make_grad_scaler("bf16", CPU).is_enabled()
    with autocast("bf16", CPU):
        assert torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3)).dtype == torch.bfloat16
    torch.manual_seed(0)
    stats, _ = run_epoch(FakeMethod(), FakeDataset(4), epoch=0, amp="bf16")
    assert torch.isfinite(torch.tensor(stats["loss"]))


def test_a_budget_in_steps_is_whole_epochs_and_one_cut_short():
    assert epoch_lengths(67, 8) == [67] * 8
    assert epoch_lengths(67, 8, steps=150) == [67, 67, 16]
    assert epoch_lengths(10, 3, steps=20) == [10, 10]  # --epochs does not count under --steps
    assert sum(epoch_lengths(7, 1, steps=1000)) == 1000


def test_too_small_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="--batch-size"):
        iterations_per_epoch(FakeDataset(3), batch_size=4)
    assert iterations_per_epoch(FakeDataset(10), batch_size=2, max_iters=3) == 3


def test_meters():
    value = SmoothedValue(window=2)
    for v in (1.0, 2.0, 6.0):
        value.update(v)
    assert (value.avg, value.median, value.global_avg) == (4.0, 2.0, 3.0)
    meters = MetricLogger()
    meters.update({"a": 1.0, "b": 2.0})
    meters.update({"a": 3.0, "b": 2.0})
    assert meters.global_averages() == {"a": 2.0, "b": 2.0}


def test_run_logger_writes_config_with_git_revision(tmp_path):
    logger = RunLogger(tmp_path)
    logger.start({"lr": 0.003})
    logger.close()
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["config"] == {"lr": 0.003} and set(written["git"]) == {"commit", "dirty"}
    assert any((tmp_path / "tensorboard").iterdir())
