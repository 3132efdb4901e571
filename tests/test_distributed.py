import argparse
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import run_gloo_processes
from model.losses import nt_xent, shuffle_rank_loss, temporal_coherent_loss
from utils import distributed

WORLD_SIZE = 2
GLOBAL_BATCH = 8
N_SERIES, SERIES_DIM = 2, 4
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _parse(argv):
    return distributed.add_distributed_args(argparse.ArgumentParser()).parse_args(argv)


def test_add_distributed_args_accepts_both_local_rank_spellings():
    assert _parse([]).device == "auto" and _parse([]).local_rank is None and _parse([]).dist_backend == "auto"
    assert _parse(["--local_rank", "3"]).local_rank == 3
    assert _parse(["--local-rank", "2", "--device", "cpu"]).local_rank == 2
    with pytest.raises(SystemExit):
        _parse(["--device", "tpu"])


def test_single_process_fallbacks(monkeypatch):
    for name in _TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_distributed(_parse(["--device", "cpu"])) == torch.device("cpu")
    assert not distributed.is_dist()
    assert (distributed.get_rank(), distributed.get_world_size(), distributed.is_main_process()) == (0, 1, True)
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather_with_grad(x) is x
    assert torch.equal(distributed.all_gather_no_grad(x), x) and not distributed.all_gather_no_grad(x).requires_grad
    assert distributed.all_reduce_mean(3) == 3.0
    assert torch.equal(distributed.all_reduce_mean(torch.tensor([1, 2])), torch.tensor([1.0, 2.0]))
    assert distributed.broadcast(x, 0) is x
    distributed.barrier()
    distributed.cleanup()


def test_init_errors_name_the_fix(monkeypatch):
    for name in _TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="MASTER_ADDR.*torchrun"):
        distributed.init_distributed(_parse(["--device", "cpu"]))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(RuntimeError, match="--dist-backend gloo"):
        distributed.init_distributed(_parse(["--device", "cpu", "--dist-backend", "nccl"]))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="--device cpu"):
            distributed.init_distributed(_parse(["--device", "cuda"]))
    assert not distributed.is_dist()


def _global_batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, GLOBAL_BATCH, 6, generator=generator)  # (views, N, features)


def _tiny_model():
    torch.manual_seed(1)
    return nn.Linear(6, N_SERIES * SERIES_DIM)


def _losses(model, views):
    """Clip, TC and SR losses of a (2, B, 6) batch of two views, through one forward like DualVar's."""
    out = model(views.flatten(0, 1))  # (2B, n·d)
    z_a, z_b = F.normalize(out, dim=1).chunk(2)  # (B, n·d) each
    s_a, s_b = F.normalize(out.view(-1, N_SERIES, SERIES_DIM), dim=2).chunk(2)  # (B, n, d) each
    return nt_xent(z_a, z_b, 0.5) + temporal_coherent_loss(s_a, s_b, 0.2) + shuffle_rank_loss(s_a, s_b)


def _worker(rank, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device = distributed.init_distributed(_parse(["--device", "cpu"]))
    local = GLOBAL_BATCH // WORLD_SIZE
    views = _global_batch()[:, rank * local:(rank + 1) * local]  # this process's half

    ddp = nn.parallel.DistributedDataParallel(_tiny_model().to(device))
    loss = _losses(ddp, views)
    loss.backward()

    # Without DDP: gradients averaged by hand must agree too (the gather alone carries the cross terms).
    plain = _tiny_model()
    _losses(plain, views).backward()
    plain_grads = {name: distributed.all_reduce_mean(p.grad) for name, p in plain.named_parameters()}

    owned = torch.full((2, 3), float(rank))
    from_one = distributed.broadcast(torch.tensor([rank + 10.0]), src=1)
    torch.save({
        "loss": loss.detach(),
        "mean_loss": distributed.all_reduce_mean(loss),
        "mean_float": distributed.all_reduce_mean(float(rank)),
        "ddp_grads": {name: p.grad for name, p in ddp.module.named_parameters()},
        "plain_grads": plain_grads,
        "gathered": distributed.all_gather_no_grad(owned),
        "broadcast": from_one,
        "world": (distributed.get_rank(), distributed.get_world_size(), distributed.is_main_process()),
    }, os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.barrier()
    distributed.cleanup()


def test_two_gloo_processes_match_single_process_global_batch(tmp_path):
    results = run_gloo_processes(_worker, tmp_path, WORLD_SIZE)

    reference_model = _tiny_model()
    reference_loss = _losses(reference_model, _global_batch())
    reference_loss.backward()

    assert [r["world"] for r in results] == [(0, 2, True), (1, 2, False)]
    assert not torch.allclose(results[0]["loss"], results[1]["loss"])  # each process averages its own anchors
    assert torch.allclose(torch.stack([r["loss"] for r in results]).mean(), reference_loss, atol=1e-6)
    for result in results:
        assert torch.allclose(result["mean_loss"], reference_loss.detach(), atol=1e-6)
        assert result["mean_float"] == pytest.approx(0.5)
        assert torch.equal(result["gathered"], torch.tensor([0.0, 1.0]).repeat_interleave(2).view(4, 1).expand(4, 3))
        assert result["broadcast"].item() == 11.0
        for name, parameter in reference_model.named_parameters():
            assert torch.allclose(result["ddp_grads"][name], parameter.grad, atol=1e-6), name
            assert torch.allclose(result["plain_grads"][name], parameter.grad, atol=1e-6), name
