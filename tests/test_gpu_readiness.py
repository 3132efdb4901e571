"""What the first CUDA run relies on, checked on the CPU: --amp auto, device selection, timeouts, resume
agreement across ranks, the memory estimate, uint8 transport, the rank-0 retrieval, BatchNorm handling."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import RECIPES
from dataset.build import build_dataset
from utils import precision
from utils.precision import check_amp, resolve_amp, select_amp

CPU = torch.device("cpu")
GPU = torch.device("cuda", 0)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fake_gpu(monkeypatch, major: int) -> None:
    """Pretend cuda:0 is a GPU of compute capability major.0 (no CUDA call reaches the driver)."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(major=major, minor=0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (major, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"Fake GPU sm_{major}0")


@pytest.mark.parametrize("fast_bf16, training, expected", [(True, False, "bf16"), (True, True, "none"),
                                                         (False, False, "none"), (False, True, "none")])
def test_amp_auto_on_the_cpu_infers_in_native_bf16_and_trains_in_fp32(monkeypatch, fast_bf16, training, expected):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast_bf16)
    assert resolve_amp("auto", CPU, training)[0] == expected
    assert resolve_amp("none", CPU, training)[0] == "none" and resolve_amp("bf16", CPU, training)[0] == "bf16"
    with precision.autocast("auto", CPU, training):
        assert torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3)).dtype == (
            torch.bfloat16 if expected == "bf16" else torch.float32)


@pytest.mark.parametrize("value, native", [("1", True), ("0", False)])
def test_vssl_cpu_bf16_makes_auto_resolve_as_on_the_other_kind_of_cpu(monkeypatch, value, native):
    monkeypatch.setenv("VSSL_CPU_BF16", value)
    assert precision.cpu_has_fast_bf16() is native
    assert resolve_amp("auto", CPU)[0] == ("bf16" if native else "none")
    assert resolve_amp("auto", CPU, training=True)[0] == "none"


def test_a_wrong_vssl_cpu_bf16_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("VSSL_CPU_BF16", "yes")
    with pytest.raises(ValueError, match=r"VSSL_CPU_BF16=yes: expected 1 .* or 0"):
        select_amp("auto", CPU)


def bf16_weight_grad_is_right(conv: torch.nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether ``conv``'s bf16 weight gradient on ``x`` matches the fp32 one of the same bf16 operands."""
    weight = conv.weight.detach().bfloat16().requires_grad_()
    x = x.bfloat16()
    out = torch.nn.functional.conv3d(x, weight, stride=conv.stride, padding=conv.padding)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).bfloat16()
    out.backward(grad_out)
    reference = torch.nn.grad.conv3d_weight(x.float(), weight.shape, grad_out.float(), stride=conv.stride,
                                            padding=conv.padding)
    return bool(torch.allclose(weight.grad.float(), reference, rtol=0.05, atol=0.05 * reference.abs().max().item()))


def test_the_cpu_bf16_gradient_check_predicts_the_r3d_stages_it_guards():
    """The check's verdict on this CPU is the truth for R3D's third stage at 8 frames and its last at 16, the
    layers whose wrong gradient turned finetuning's loss NaN on AVX-512 CPUs (right on AVX2 ones)."""
    from model.backbones import build_backbone
    check = precision.cpu_bf16_conv3d_grad_is_right.__wrapped__  # not the cached verdict
    backbone, _ = build_backbone("r3d", 8)
    generator = torch.Generator().manual_seed(0)
    cases = [(backbone.layer3[0].conv2[0], torch.randn(3, 32, 2, 4, 4, generator=generator)),
             (backbone.layer4[0].conv2[0], torch.randn(2, 64, 2, 7, 7, generator=generator))]
    assert [bf16_weight_grad_is_right(conv, x) for conv, x in cases] == [check()] * 2


def test_the_cpu_bf16_gradient_check_fails_a_wrong_gradient(monkeypatch):
    check = precision.cpu_bf16_conv3d_grad_is_right.__wrapped__
    true_reference = torch.nn.grad.conv3d_weight
    monkeypatch.setattr(torch.nn.grad, "conv3d_weight", lambda *a, **k: true_reference(*a, **k) * 1.5)
    assert check() is False


def test_bf16_training_on_a_cpu_whose_gradient_check_fails_is_refused(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_conv3d_grad_is_right", lambda: False)
    with pytest.raises(ValueError, match=r"--amp bf16: this CPU's bf16 Conv3d weight gradients are wrong.*--amp none"):
        select_amp("bf16", CPU, training=True)
    assert select_amp("bf16", CPU) == "bf16"  # inference runs no backward pass
    monkeypatch.setattr(precision, "cpu_bf16_conv3d_grad_is_right", lambda: True)
    assert select_amp("bf16", CPU, training=True) == "bf16"


@pytest.mark.parametrize("major, expected", [(8, "bf16"), (9, "bf16"), (7, "fp16")])
def test_amp_auto_on_cuda_picks_bf16_from_ampere_on_and_fp16_before(monkeypatch, major, expected):
    fake_gpu(monkeypatch, major)
    assert resolve_amp("auto", GPU)[0] == expected


def test_amp_bf16_on_a_pre_ampere_gpu_is_refused(monkeypatch):
    fake_gpu(monkeypatch, 7)
    with pytest.raises(ValueError, match=r"--amp bf16: Fake GPU sm_70 \(compute capability 7.0\) has no native "
                                         r"bfloat16.*--amp fp16"):
        check_amp("bf16", GPU)
    check_amp("fp16", GPU)
    fake_gpu(monkeypatch, 8)
    check_amp("bf16", GPU)


def test_select_amp_prints_its_choice(monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert select_amp("auto", CPU) == "none"
    assert "--amp auto: fp32 on cpu" in capsys.readouterr().out
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert select_amp("auto", CPU) == "bf16"
    assert "--amp auto: bf16 autocast on cpu (CPU with AVX512-BF16 or AMX)" in capsys.readouterr().out
    assert select_amp("auto", CPU, training=True) == "none"
    assert "--amp auto: fp32 on cpu (training on a CPU: oneDNN's bf16 Conv3d" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA device"):
        select_amp("fp16", CPU)


def test_autocast_resolves_auto(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    with precision.autocast("auto", CPU):
        assert torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3)).dtype == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    with precision.autocast("auto", CPU):
        assert torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3)).dtype == torch.float32


def test_the_entry_scripts_default_to_amp_auto():
    import importlib
    for name in ("train_ssl", "finetune", "test", "retrieve"):
        parser = importlib.import_module(name).get_args_parser()
        assert parser.get_default("amp") == "auto", name


def test_paper_launchers_pass_amp_auto(tmp_path):
    from test_paper_scripts import printed_commands, split_entry
    commands = printed_commands("run", "simclr_clip-sr-tc_r21d_ucf101", tmp_path, NUM_GPUS="8")
    assert len(commands) == 6
    for cmd in commands:
        args = split_entry(cmd)[1]
        assert args[args.index("--amp") + 1] == "auto", cmd


# ---------------------------------------------------------------- device, timeout, kernels

def test_a_process_that_sees_one_gpu_uses_it_whatever_its_local_rank():
    from utils.distributed import cuda_index
    assert [cuda_index(rank, 1) for rank in range(8)] == [0] * 8  # Slurm --gpus-per-task=1
    assert [cuda_index(rank, 8) for rank in range(8)] == list(range(8))  # torchrun on one 8-GPU node
    with pytest.warns(UserWarning, match="local rank 5 sees 4 GPUs: it shares GPU 1"):
        assert cuda_index(5, 4) == 1


def test_local_rank_reaches_the_device_through_the_modulo(monkeypatch):
    from utils import distributed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed._resolve_device("auto", 3) == torch.device("cuda", 0)


@pytest.mark.parametrize("script", ["train_ssl", "finetune", "test", "retrieve"])
def test_dist_timeout_reaches_init_process_group(monkeypatch, script):
    """Every entry script takes --dist-timeout (minutes) and init_distributed hands it to the process group."""
    import datetime
    import importlib

    from utils import distributed
    argv = {"train_ssl": [], "finetune": ["--pretrain", "none"], "test": ["--ckpt", "x.pth"],
            "retrieve": ["--ckpt", "x.pth"]}[script]
    args = importlib.import_module(script).get_args_parser().parse_args(
        argv + ["--dist-timeout", "45", "--device", "cpu"])
    assert args.dist_timeout == 45
    for name, value in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT="1").items():
        monkeypatch.setenv(name, value)
    seen = {}
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: seen.update(kwargs))
    distributed.init_distributed(args)
    assert seen["timeout"] == datetime.timedelta(minutes=45) and seen["backend"] == "gloo"


def test_kernel_settings_fast_by_default_deterministic_on_request(monkeypatch):
    from utils.distributed import configure_kernels
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        configure_kernels(GPU, deterministic=False)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
        assert not torch.are_deterministic_algorithms_enabled()
        configure_kernels(GPU, deterministic=True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        configure_kernels(CPU, deterministic=False)
        assert not torch.backends.cudnn.benchmark  # the CPU has no cuDNN to tune
    finally:
        configure_kernels(CPU, deterministic=False)


# ---------------------------------------------------------------- resume across nodes

def _tiny_checkpointer(output_dir):
    from engine.checkpoint import Checkpointer
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Checkpointer(output_dir, model, optimizer), model


def _resume_worker(rank, port, out_dir):
    """Each rank runs in its own folder out_dir/node<r> (its "own disk") with the same relative --output-dir, as two
    nodes with local disks would; "shared" is an absolute folder both see."""
    import torch.distributed as dist

    from utils import distributed
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    os.chdir(f"{out_dir}/node{rank}")
    distributed.init_distributed(SimpleNamespace(device="cpu", dist_backend="gloo", dist_timeout=2))
    outcome = {}
    for case in ("only_rank0_has_it", "only_rank1_has_it", "each_has_its_own", "shared"):
        folder = f"{out_dir}/shared" if case == "shared" else f"runs/{case}"
        checkpointer, model = _tiny_checkpointer(folder)
        try:
            start = checkpointer.resume("auto")
            weights = torch.cat([p.detach().flatten() for p in model.parameters()])
            gathered = [torch.empty_like(weights) for _ in range(2)]
            dist.all_gather(gathered, weights)
            outcome[case] = {"epoch": start.epoch, "same_weights": torch.equal(*gathered)}
        except Exception as error:  # noqa: BLE001 - the test reads the message
            outcome[case] = {"error": f"{type(error).__name__}: {error}"}
    torch.save(outcome, f"{out_dir}/rank{rank}.pt")
    distributed.cleanup()


def test_resume_is_decided_by_rank_0_and_needs_a_shared_output_folder(tmp_path):
    from conftest import run_gloo_processes
    (tmp_path / "node1").mkdir()
    for folder, epoch in (("node0/runs/only_rank0_has_it", 3), ("node1/runs/only_rank1_has_it", 3), ("shared", 3),
                          ("node0/runs/each_has_its_own", 3), ("node1/runs/each_has_its_own", 1)):
        checkpointer, model = _tiny_checkpointer(tmp_path / folder)
        with torch.no_grad():
            model.weight.add_(1.0)  # trained weights, unlike a fresh start
        checkpointer.save(epoch, 0, 10 * epoch)
    outcomes = run_gloo_processes(_resume_worker, tmp_path, start_method="fork")
    for outcome in outcomes:  # the same clear error on both ranks, not a drift then a hang
        error = outcome["only_rank0_has_it"]["error"]
        assert error.startswith("CheckpointError: rank 0 resumes from") and "rank 1 on" in error
        assert "--output-dir must be a folder that every node shares" in error and "rank 0 on" not in error
        # rank 1's stale file on its own disk is ignored: rank 0 found none, so both start afresh
        assert outcome["only_rank1_has_it"] == {"epoch": 0, "same_weights": True}
        assert outcome["shared"] == {"epoch": 3, "same_weights": True}
        # an old checkpoint at the same path on rank 1's disk: caught by comparing what each rank read
        error = outcome["each_has_its_own"]["error"]
        assert error.startswith("CheckpointError: rank 0 and rank 1 (on ") and "[3, 0, 30] and [1, 0, 10]" in error


# ---------------------------------------------------------------- memory estimate

def _real_saved_bytes(net, width, frames, size):
    """What autograd really keeps for one CPU clip (parameters excluded, storages counted once)."""
    from model.backbones import build_backbone
    torch.manual_seed(0)
    backbone, _ = build_backbone(net, width)
    parameters = {p.untyped_storage().data_ptr() for p in backbone.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        backbone(torch.randn(1, 3, frames, size, size))
    return sum(saved.values())


@pytest.mark.parametrize("net", ["r21d", "r3d"])
def test_the_meta_count_of_activations_equals_a_real_forward(net):
    from engine.memory import saved_activation_bytes
    assert saved_activation_bytes(net, 8, 8, 32) == _real_saved_bytes(net, 8, 8, 32) > 0


def _pretrain_args(*argv):
    import train_ssl
    return train_ssl.parse_args(["--base-width", "8", "--num-frames", "8", "--size", "32", "--resize", "36", "48",
                                 *argv])


@pytest.mark.parametrize("argv, passes", [(["--mode", "clip-sr-tc"], 4), (["--mode", "clip"], 2),
                                          (["--mode", "clip-sr"], 4), (["--model", "moco", "--mode", "clip-sr-tc"], 3),
                                          (["--model", "moco", "--mode", "clip"], 1), (["--model", "iic"], 2)])
def test_the_estimate_counts_the_passes_with_gradient(argv, passes):
    from engine.memory import clips_with_gradient
    assert clips_with_gradient(_pretrain_args(*argv)) == passes


def test_the_estimate_scales_with_batch_and_precision_and_is_in_the_dry_run(capsys):
    import json

    import train_ssl
    from model import build_method
    from engine.memory import pretraining_memory, saved_activation_bytes
    args = _pretrain_args("--batch-size", "4")
    method = build_method(args)
    fp32 = pretraining_memory(args, method, "none")
    per_clip = saved_activation_bytes("r21d", 8, 8, 32)
    assert fp32["activations_gib"] == round(4 * 4 * per_clip / 2**30, 2)
    args.batch_size = 8
    assert pretraining_memory(args, method, "none")["activations_gib"] == pytest.approx(
        2 * fp32["activations_gib"], abs=0.011)
    assert pretraining_memory(args, method, "bf16")["activations_per_clip_gib"] == pytest.approx(
        fp32["activations_per_clip_gib"] / 2, abs=0.001)
    train_ssl.main(_pretrain_args("--batch-size", "4", "--amp", "none", "--dry-run"))
    assert json.loads(capsys.readouterr().out)["resolved"]["memory_estimate"] == fp32


def test_a_step_that_cannot_fit_the_gpu_is_refused_with_the_flags_to_use(monkeypatch):
    from engine.memory import check_fits
    fake_gpu(monkeypatch, 8)
    estimate = {"peak_per_gpu_gib": 90.9, "batch_per_process": 64, "clips_with_gradient_per_video": 4,
                "clip": "16x112x112", "amp": "none", "grad_checkpoint": False,
                "peak_per_gpu_gib_with_grad_checkpoint": 50.0}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=80 * 2**30))
    with pytest.raises(ValueError, match=r"about 90.9 GiB per GPU .* more than the 80 GiB of Fake GPU sm_80: .*run on "
                                         r"more GPUs \(.*NUM_GPUS=8 gives 8 per GPU\).*--batch-size to about 56"):
        check_fits(estimate, GPU, world_size=1)
    check_fits({**estimate, "peak_per_gpu_gib": 70.0}, GPU, world_size=1)
    check_fits(estimate, CPU, world_size=1)


# ---------------------------------------------------------------- uint8 transport

QUANTUM = 0.5 / 255 / min(0.229, 0.224, 0.225)  # half a byte step, through the smallest ImageNet std


def _batch(dataset, count=3):
    items = [dataset[i] for i in range(count)]
    return {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in items[0]}


@pytest.mark.parametrize("sampler, tolerance", [("dualvar", QUANTUM), ("finetune", QUANTUM), ("iic", 1e-6),
                                                ("eval", 1e-5)])
def test_uint8_clips_become_the_float_clips_on_the_device(tiny_demo, sampler, tolerance):
    """Byte clips give the float clips of before: exactly (to float rounding) where no colour work is done (IIC's
    [0, 1] crops, the centre crops of evaluation), within half a byte step after jitter and blur."""
    from conftest import tiny_demo_args
    from dataset.build import build_dataset
    args = tiny_demo_args(tiny_demo)
    split = "test" if sampler == "eval" else "trainval"
    floats = _batch(build_dataset(args, split, RECIPES[sampler]))
    shipped = build_dataset(args, split, RECIPES[sampler], uint8=True)
    raw = _batch(shipped)
    key = "clip" if sampler in ("iic", "finetune") else "clips"
    assert raw[key].dtype == torch.uint8 and raw[key].element_size() * 4 == floats[key].element_size()
    batch = shipped.to_device(raw, CPU)
    assert batch[key].dtype == torch.float32 and batch[key].shape == floats[key].shape
    assert (batch[key] - floats[key]).abs().max() <= tolerance + 1e-6
    assert torch.equal(batch["index"], floats["index"])


@pytest.mark.parametrize("sampler, modality", [("iic", "u"), ("finetune", "u"), ("eval", "v")])
def test_uint8_flow_clips_stay_in_zero_one(tmp_path, sampler, modality):
    import numpy as np

    from test_flow import hand_made_args, hand_made_set
    hand_made_set(tmp_path, lambda y, x, t: 3 * x + 2 * y, lambda y, x, t: 60 + 2 * x, lambda y, x, t: 10 + 0 * x + t)
    args = hand_made_args(tmp_path)
    split = "test" if sampler == "eval" else "trainval"
    floats = build_dataset(args, split, RECIPES[sampler], modality=modality)[0]
    shipped = build_dataset(args, split, RECIPES[sampler], modality=modality, uint8=True)
    batch = shipped.to_device({k: torch.as_tensor(v)[None] for k, v in shipped[0].items()}, CPU)
    for key in set(floats) & {"clip", "clips", "flow"}:
        np.testing.assert_allclose(batch[key][0].numpy(), floats[key].numpy(), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- retrieval on rank 0, in blocks

def _neighbours_in_one_piece(queries, gallery, k):
    """The former path: the whole similarity matrix, a stable argsort in NumPy."""
    return np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :min(k, len(gallery))]


@pytest.mark.parametrize("block_elements, gallery_elements", [(2**26, 2**28), (200, 2**28), (1, 2**28),
                                                             (200, 16 * 17), (1, 16)])
@pytest.mark.parametrize("k", [50, 5])
def test_blockwise_neighbours_equal_the_whole_matrix(block_elements, gallery_elements, k):
    """Blocks of queries, chunks of the gallery (17 rows, or k rows at least): the neighbours of the whole matrix."""
    from evaluation.metrics import centre_and_normalise, nearest_neighbours
    rng = np.random.default_rng(0)
    gallery = centre_and_normalise(rng.standard_normal((60, 16)).astype(np.float32))
    queries = centre_and_normalise(rng.standard_normal((23, 16)).astype(np.float32))
    blocks = dict(block_elements=block_elements, gallery_elements=gallery_elements)
    got = nearest_neighbours(queries, gallery, k, **blocks)
    np.testing.assert_array_equal(got, _neighbours_in_one_piece(queries, gallery, k))
    # small integers: every similarity is exact in both paths, and ties abound; the lower row must come first
    gallery, queries = (rng.integers(-2, 3, (n, 16)).astype(np.float32) for n in (60, 23))
    got = nearest_neighbours(queries, gallery, k, **blocks)
    np.testing.assert_array_equal(got, _neighbours_in_one_piece(queries, gallery, k))


class _Rows(torch.utils.data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, index):
        return {"x": torch.full((3,), float(index)), "index": index}


def _gather_worker(rank, port, out_dir):
    from evaluation.inference import run_inference
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        result = run_inference(lambda batch: batch["x"] * 10, _Rows(), batch_size=2, workers=0, device=CPU,
                               everywhere=False)
        torch.save(None if result is None else torch.from_numpy(result), f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_retrieval_features_are_gathered_on_rank_0_only(tmp_path):
    from conftest import run_gloo_processes
    on_rank0, on_rank1 = run_gloo_processes(_gather_worker, tmp_path, start_method="fork")
    assert on_rank1 is None
    np.testing.assert_array_equal(on_rank0.numpy(), 10 * np.repeat(np.arange(5.0)[:, None], 3, axis=1))


# ---------------------------------------------------------------- BatchNorm across processes

@pytest.mark.parametrize("gpus", ["1", "2", "8"])
def test_launchers_sync_batchnorm_for_finetuning_and_iic_on_several_gpus(tmp_path, gpus):
    from test_paper_scripts import printed_commands, split_entry
    commands = printed_commands("run", "iic_repeat_res_r3d_ucf101", tmp_path, NUM_GPUS=gpus)
    commands += printed_commands("run", "simclr_clip-sr-tc_r21d_ucf101", tmp_path, NUM_GPUS=gpus)
    synced = {(split_entry(c)[0], "--model" in c and c[c.index("--model") + 1]) for c in commands if "--sync-bn" in c}
    expected = {("finetune.py", False), ("train_ssl.py", "iic")} if gpus != "1" else set()
    assert synced == expected


def _tiny_moco(*argv):
    from test_dualvar import tiny_method
    return tiny_method("--model", "moco", "--mode", "clip-tc", "--moco-k", "8", *argv)


def test_moco_in_one_process_shuffles_keys_across_sub_batches_with_their_own_statistics():
    from test_dualvar import random_clips
    method = _tiny_moco("--moco-bn-splits", "2").train()
    clips = random_clips(method, batch=4)[:, 1]  # (4, 3, T, H, W), the key view
    torch.manual_seed(3)
    keys, series = method.encode_keys(clips)
    # what it must equal: the same permutation, each half of the shuffled batch through the key encoder alone
    torch.manual_seed(3)
    permutation = torch.randperm(4)
    with torch.no_grad():
        halves = [method.key_encoder(part) for part in clips[permutation].chunk(2)]
    inverse = torch.argsort(permutation)
    torch.testing.assert_close(keys, torch.cat([h[0] for h in halves])[inverse])
    torch.testing.assert_close(series, torch.cat([h[1] for h in halves])[inverse])
    with torch.no_grad():
        whole = method.key_encoder(clips)[0]  # the leak: statistics of the queries' own four videos
    assert not torch.allclose(keys, whole, atol=1e-4)
    # the queries see the same sub-batch structure (the "virtual GPUs"), in order
    with torch.no_grad():
        queries = method.encode_queries(clips)[0]
        torch.testing.assert_close(queries, torch.cat([method.encoder(part)[0] for part in clips.chunk(2)]))
    one = _tiny_moco("--moco-bn-splits", "1").train()
    with torch.no_grad():
        torch.testing.assert_close(one.encode_keys(clips)[0], one.key_encoder(clips)[0])


def test_moco_sync_bn_converts_the_query_encoder_only(monkeypatch):
    from engine import training
    method = _tiny_moco()
    monkeypatch.setattr(training, "is_dist", lambda: True)
    converted = training.convert_sync_bn(method, True, GPU)
    kinds = {name.split(".")[0]: set() for name, _ in converted.named_modules() if name}
    for name, module in converted.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            kinds[name.split(".")[0]].add(type(module).__name__)
    assert kinds["encoder"] == {"SyncBatchNorm"} and kinds["key_encoder"] == {"BatchNorm3d"}
    simclr = training.convert_sync_bn(__import__("test_dualvar").tiny_method("--model", "simclr"), True, GPU)
    assert not any(type(m) is torch.nn.BatchNorm3d for m in simclr.modules())
    with pytest.raises(ValueError, match="--sync-bn needs CUDA"):
        training.convert_sync_bn(_tiny_moco(), True, CPU)
    assert training.convert_sync_bn(method, False, GPU) is method


# ---------------------------------------------------------------- the hot loop

def test_the_training_loop_reads_the_device_once_per_iteration_after_the_backward_pass(monkeypatch):
    """No host sync between the forward and the backward pass (the GPU would idle while the host waits); the
    metrics cross to the host together at the logged iterations only."""
    from test_engine import FakeDataset, FakeMethod, run_epoch
    events = []
    real_tolist, real_item = torch.Tensor.tolist, torch.Tensor.item

    def tolist(tensor):
        events.append(("sync", tuple(tensor.shape)))
        return real_tolist(tensor)

    def item(tensor):
        events.append(("sync", tuple(tensor.shape)))
        return real_item(tensor)

    torch.manual_seed(0)
    model = FakeMethod()
    model.linear.weight.register_hook(lambda grad: events.append(("backward", None)))
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    monkeypatch.setattr(torch.Tensor, "item", item)
    stats, _ = run_epoch(model, FakeDataset(16), epoch=0, log_every=3)  # 8 iterations, logged at 0, 3, 6, 7
    monkeypatch.undo()
    per_iteration = [e for e in events if e == ("sync", (3,))]
    assert len(per_iteration) == 8  # the verdict: finite loss, stop signal, a scheduler's stop request
    order = [kind for kind, shape in events if kind == "backward" or shape == (3,)]
    assert order == ["backward", "sync"] * 8  # each iteration's one sync comes after its backward pass
    metric_transfers = [shape for kind, shape in events if kind == "sync" and len(shape) == 2]
    assert metric_transfers == [(1, 4), (3, 4), (3, 4), (1, 4)]  # (iterations, loss + 3 outputs) at 0, 3, 6, 7
    assert set(stats) >= {"loss", "loss_a", "loss_b", "acc_x", "lr", "step_time"}


def _host_reads(monkeypatch, fn):
    """The tensor-to-host reads (item, tolist, bool, int, unique) made while ``fn`` runs."""
    reads = []
    for name in ("item", "tolist", "__bool__", "__int__", "__index__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda t, *a, _real=real, _name=name: reads.append(_name) or _real(t, *a))
    real_unique = torch.unique
    monkeypatch.setattr(torch, "unique", lambda *a, **k: reads.append("unique") or real_unique(*a, **k))
    try:
        fn()
    finally:
        monkeypatch.undo()
    return reads


def test_moco_and_the_iic_banks_never_read_the_device_in_a_step(monkeypatch):
    from model.iic import MemoryBanks
    from test_dualvar import random_clips
    moco = _tiny_moco("--mode", "clip-sr-tc").train()  # queue pointer, shuffle-BN, segment shuffle
    clips = random_clips(moco, batch=4)
    assert _host_reads(monkeypatch, lambda: moco(clips)) == []
    assert moco.queue_ptr.tolist() == [4]
    banks = MemoryBanks(("view1",), num_videos=6, dim=3, momentum=0.5)
    index = torch.tensor([3, 0, 3])
    features = {"view1": torch.randn(3, 3)}
    assert _host_reads(monkeypatch, lambda: (banks.draw(index, 4), banks.update(index, features))) == []


def test_default_workers_share_the_node_among_its_processes(monkeypatch):
    from utils.distributed import default_workers
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 8  # capped
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_workers() == 7  # 8 cores per GPU, one for the training process
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_workers() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers() == 1  # never zero: the training process would decode itself


# ---------------------------------------------------------------- bench/gpu_smoke.sh

def test_gpu_smoke_script_commands_parse(tmp_path):
    """The smoke script cannot run here; its commands (DRY_RUN=1) must at least parse with their scripts' flags."""
    import shlex
    import subprocess
    from pathlib import Path

    import bench.bench_step as bench_step
    from test_paper_scripts import load_entry, split_entry
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_smoke.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    proc = subprocess.run(["bash", str(script), str(tmp_path / "smoke")], env={**os.environ, "DRY_RUN": "1",
                          "NUM_GPUS": "2"}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]
    entries = [split_entry(c) for c in commands]
    assert [script for script, _ in entries].count("train_ssl.py") == 6  # simclr, moco, iic, whole, killed, resumed
    for cmd, (entry, argv) in zip(commands, entries):
        if entry in ("train_ssl.py", "finetune.py", "test.py", "retrieve.py"):
            assert cmd[:4] == ["torchrun", "--standalone", "--nproc_per_node", "2"]
            module = load_entry(entry)
            args = module.parse_args(argv) if entry == "train_ssl.py" else module.get_args_parser().parse_args(argv)
            assert args.amp == "auto"
            assert entry != "finetune.py" or args.sync_bn
        elif entry == "bench/bench_step.py":
            args = bench_step.get_args_parser().parse_args(argv)
            assert (args.device, args.base_width, args.num_frames, args.size, args.amp) == ("cuda", 64, 16, 112, "auto")
            assert args.channels_last  # measured on the first GPU: adopted only if faster there
            assert args.grad_checkpoint  # its cost and its GPU memory, against the estimate
    killed = [argv for entry, argv in entries if "--save-every-iters" in argv]
    assert len(killed) == 2 and killed[0] == killed[1] and "--deterministic" in killed[0]


def test_bench_step_channels_last_variant_computes_the_same_step():
    import bench.bench_step as bench_step
    args = bench_step.get_args_parser().parse_args(["--base-width", "4", "--batch-size", "2", "--num-frames", "8",
                                                    "--size", "16", "--amp", "none"])
    steps = {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        steps[channels_last] = bench_step.build_step("dualvar", args, channels_last=channels_last)
        steps[channels_last]()
    conv = next(m for m in steps[True].model.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    for (name, a), b in zip(steps[False].model.state_dict().items(), steps[True].model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_bench_step_grad_checkpoint_variant_computes_the_same_step():
    import bench.bench_step as bench_step
    args = bench_step.get_args_parser().parse_args(["--base-width", "4", "--batch-size", "2", "--num-frames", "8",
                                                    "--size", "16", "--amp", "none", "--grad-checkpoint"])
    steps = {}
    for checkpointed in (False, True):
        torch.manual_seed(0)
        steps[checkpointed] = bench_step.build_step("dualvar", args, grad_checkpoint=checkpointed)
        steps[checkpointed]()
    assert steps[True].model.backbone.grad_checkpoint and not steps[False].model.backbone.grad_checkpoint
    for (name, a), b in zip(steps[False].model.state_dict().items(), steps[True].model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_pretraining_ddp_does_not_broadcast_buffers(tiny_demo, tmp_path, monkeypatch):
    """IIC's banks and MoCo's queue are identical on every rank by construction: no 59 MB broadcast per step."""
    import train_ssl
    from conftest import tiny_demo_flags
    from engine import training

    class Wrapped(Exception):
        pass

    seen = {}

    def fake_ddp(module, **kwargs):
        seen.update(kwargs)
        raise Wrapped

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", fake_ddp)
    monkeypatch.setattr(train_ssl, "is_dist", lambda: True)
    monkeypatch.setattr(training, "is_dist", lambda: True)  # where the run is wrapped
    args = train_ssl.parse_args([*tiny_demo_flags(tiny_demo), "--model", "iic", "--net", "r3d", "--base-width", "8",
                                 "--batch-size", "2", "--output-dir", str(tmp_path / "run")])
    with pytest.raises(Wrapped):
        train_ssl._train(args, CPU)
    assert seen["broadcast_buffers"] is False
