"""--grad-checkpoint: each backbone stage recomputed in backward gives the same outputs, loss, gradients and
BatchNorm running statistics as the plain forward (every backbone, SimCLR and MoCo DualVar, IIC, two DDP
processes with MoCo's shuffle across them), the stages really run twice, and the memory estimate and the
refusal account for it."""

import argparse
import copy
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from conftest import run_gloo_processes
from model import add_method_args, build_method
from model.backbones import BACKBONES, build_backbone, set_grad_checkpointing
from utils import distributed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _norms(module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _assert_same_state(plain: nn.Module, checkpointed: nn.Module) -> None:
    """Gradients and buffers (running statistics, counters, queues, banks) equal to fp32 rounding."""
    grads = {name: p.grad for name, p in checkpointed.named_parameters()}
    for name, p in plain.named_parameters():
        if p.grad is None:
            assert grads[name] is None, name
        else:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)
    buffers = dict(checkpointed.named_buffers())
    for name, buffer in plain.named_buffers():
        torch.testing.assert_close(buffers[name], buffer, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("net", sorted(BACKBONES))
def test_every_backbone_gives_the_same_output_gradients_and_statistics(net):
    """Two training steps (SGD), so that the second runs on statistics the first wrote; BatchNorm with momentum
    None (a cumulative average, driven by num_batches_tracked) in one stage; each conv runs twice a step."""
    torch.manual_seed(0)
    plain, _ = build_backbone(net, 64 if net == "s3d" else 4)
    _norms(plain)[0].momentum = None
    momenta = [norm.momentum for norm in _norms(plain)]
    checkpointed = copy.deepcopy(plain)
    assert set_grad_checkpointing(checkpointed, True) == 1
    calls = {"plain": 0, "checkpointed": 0}
    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        for module in model.modules():
            if isinstance(module, nn.Conv3d):
                module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (plain, checkpointed)]
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        clips = torch.randn(2, 3, 8, 32, 32, generator=generator)
        inputs, outputs = [], []
        for model, optimizer in zip((plain, checkpointed), optimizers):
            x = clips.clone().requires_grad_()
            out = model.train()(x)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
            inputs.append(x.grad)
            outputs.append(out.detach())
        torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(inputs[1], inputs[0], rtol=1e-5, atol=1e-6)
        _assert_same_state(plain, checkpointed)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
    assert calls["checkpointed"] == 2 * calls["plain"] > 0
    assert all(norm.num_batches_tracked.item() == 2 for norm in _norms(checkpointed))
    assert [norm.momentum for norm in _norms(checkpointed)] == momenta  # put back after each rerun
    with torch.no_grad():  # no gradients, nothing recomputed
        before = calls["checkpointed"]
        checkpointed(clips)
        assert calls["checkpointed"] - before == calls["plain"] // 2  # one forward of the two steps' worth


def _method(*argv, num_videos=None):
    parser = argparse.ArgumentParser()
    add_method_args(parser)
    torch.manual_seed(0)
    return build_method(parser.parse_args(["--net", "r21d", "--base-width", "4", *argv]), num_videos=num_videos)


def _step(method, inputs):
    torch.manual_seed(5)  # the forward's own draws (permutations, MoCo's shuffle, IIC's bank rows)
    out = method(*inputs)
    sum(method.loss_weights[name] * out[name] for name in method.loss_weights).backward()
    return {name: value.detach() for name, value in out.items()}


@pytest.mark.parametrize("argv", [["--mode", "clip-sr-tc"], ["--model", "moco", "--mode", "clip-sr-tc", "--moco-k", "8"],
                                  ["--model", "iic", "--intra-neg", "repeat", "--bank-k", "4"]])
def test_methods_give_the_same_losses_gradients_and_buffers(argv):
    """SimCLR DualVar (one pass over A, B, A', then shuffled A'), MoCo (queries in shuffle-BN sub-batches, the key
    encoder without gradient, the queue) and IIC (two views, memory banks)."""
    iic = "iic" in argv
    plain = _method(*argv, num_videos=8 if iic else None)
    checkpointed = copy.deepcopy(plain)
    assert set_grad_checkpointing(checkpointed, True) >= 1
    generator = torch.Generator().manual_seed(2)
    if iic:
        inputs = (torch.rand(4, 3, 8, 32, 32, generator=generator), torch.arange(4))
    else:
        inputs = (torch.randn(4, plain.num_views, 3, 8, 32, 32, generator=generator),)
    plain.train()
    checkpointed.train()
    losses = _step(plain, inputs), _step(checkpointed, inputs)
    for name in losses[0]:
        torch.testing.assert_close(losses[1][name], losses[0][name], rtol=1e-5, atol=1e-6, equal_nan=True, msg=name)
    _assert_same_state(plain, checkpointed)


def _ddp_worker(rank, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    distributed.add_distributed_args(parser)
    device = distributed.init_distributed(parser.parse_args(["--device", "cpu"]))
    results = {}
    for name, argv in (("simclr", ["--mode", "clip-sr-tc"]),
                       ("moco", ["--model", "moco", "--mode", "clip-sr-tc", "--moco-k", "8"])):
        clips = torch.randn(2, 3, 3, 8, 32, 32, generator=torch.Generator().manual_seed(10 + rank))  # (B, A B A', ...)
        for checkpointing in (False, True):
            method = _method(*argv).to(device)
            set_grad_checkpointing(method, checkpointing)
            model = nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)  # as train_ssl.py wraps it
            torch.manual_seed(5 + rank)
            out = model(clips)
            sum(method.loss_weights[term] * out[term] for term in method.loss_weights).backward()
            results[(name, checkpointing)] = {
                "losses": {term: value.detach() for term, value in out.items()},
                "grads": {n: p.grad for n, p in method.named_parameters()},
                "buffers": {n: b.clone() for n, b in method.named_buffers()}}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.cleanup()


def test_two_ddp_processes_give_the_same_gradients(tmp_path):
    """Under DDP (gradients all-reduced in backward while stages are recomputed) and with MoCo's key batch
    shuffled across the two processes: per rank, the same losses, gradients and buffers."""
    for results in run_gloo_processes(_ddp_worker, tmp_path, timeout=300):
        for method in ("simclr", "moco"):
            plain, checkpointed = results[(method, False)], results[(method, True)]
            for name, loss in plain["losses"].items():
                torch.testing.assert_close(checkpointed["losses"][name], loss, rtol=1e-5, atol=1e-6,
                                           equal_nan=True, msg=name)
            for kind in ("grads", "buffers"):
                for name, value in plain[kind].items():
                    if value is not None:
                        torch.testing.assert_close(checkpointed[kind][name], value, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------- memory estimate and refusal

def _pretrain_args(*argv):
    import train_ssl
    return train_ssl.parse_args(["--base-width", "8", "--num-frames", "8", "--size", "32", "--resize", "36", "48",
                                 *argv])


@pytest.mark.parametrize("net", ["r21d", "c3d"])
def test_the_stage_counts_equal_a_real_forward_stage_by_stage(net):
    """Per stage, the input's bytes and what autograd saves inside, as a real CPU forward of one clip has them."""
    from engine.memory import stage_activation_bytes
    torch.manual_seed(0)
    backbone, _ = build_backbone(net, 8)
    parameters = {p.untyped_storage().data_ptr() for p in backbone.parameters()}
    x, expected = torch.randn(1, 3, 8, 32, 32), []
    for stage in backbone.stages():
        saved = {}

        def pack(tensor):
            if tensor.untyped_storage().data_ptr() not in parameters:
                saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = stage(x)
        expected.append((x.numel() * 4, sum(saved.values())))
        x = out
    assert stage_activation_bytes(net, 8, 8, 32) == expected
    assert len(expected) == 5 and all(saved > 0 for _, saved in expected)


def test_the_estimate_with_grad_checkpoint_keeps_stage_inputs_and_one_recomputed_stage(capsys):
    import json

    import train_ssl
    from engine.memory import GIB, pretraining_memory, stage_activation_bytes
    args = _pretrain_args("--batch-size", "256", "--grad-checkpoint")
    method = build_method(args)
    stages = stage_activation_bytes("r21d", 8, 8, 32)
    estimate = pretraining_memory(args, method, "none")
    # SimCLR clip-sr-tc: 4 clips per video keep their stage inputs; A, B and A' go through the backbone together
    kept, recomputed = sum(s[0] for s in stages), max(s[1] for s in stages)
    assert estimate["grad_checkpoint"] is True
    assert estimate["activations_gib"] == round((4 * 256 * kept + 3 * 256 * recomputed) / GIB, 2)
    assert estimate["peak_per_gpu_gib"] == estimate["peak_per_gpu_gib_with_grad_checkpoint"]
    assert estimate["peak_per_gpu_gib_with_grad_checkpoint"] < estimate["peak_per_gpu_gib_without_grad_checkpoint"]
    train_ssl.main(_pretrain_args("--batch-size", "256", "--amp", "none", "--grad-checkpoint", "--dry-run"))
    assert json.loads(capsys.readouterr().out)["resolved"]["memory_estimate"] == estimate


def test_the_refusal_names_grad_checkpoint_and_what_it_would_need(monkeypatch):
    from engine.memory import check_fits
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=80 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "Fake GPU")
    gpu = torch.device("cuda", 0)
    estimate = {"peak_per_gpu_gib": 90.9, "batch_per_process": 64, "clips_with_gradient_per_video": 4,
                "clip": "16x112x112", "amp": "none", "grad_checkpoint": False,
                "peak_per_gpu_gib_with_grad_checkpoint": 50.0}
    with pytest.raises(ValueError, match=r"more than the 80 GiB of Fake GPU: add --grad-checkpoint \(about 50.0 GiB "
                                         r"per GPU; the same gradients.*\), run on more GPUs"):
        check_fits(estimate, gpu, world_size=1)
    with pytest.raises(ValueError, match=r"add --grad-checkpoint \(about 85.0 GiB per GPU, still too much"):
        check_fits({**estimate, "peak_per_gpu_gib_with_grad_checkpoint": 85.0}, gpu, world_size=1)
    with pytest.raises(ValueError) as refused:
        check_fits({**estimate, "grad_checkpoint": True}, gpu, world_size=1)
    assert "--amp none, --grad-checkpoint;" in str(refused.value) and "add --grad-checkpoint" not in str(refused.value)
