"""IIC (METHOD.md §6): view and intra-negative generators, memory-bank logits and updates, checkpoints,
short training runs per modality × intra-negative, train_ssl wiring, and banks under 2 gloo processes."""

import argparse
import json
import os

import pytest
import torch
import torch.nn.functional as F

import train_ssl
from conftest import RECIPES, run_gloo_processes, tiny_demo_args, tiny_demo_flags, train_iic_steps
from dataset.build import build_dataset
from model import add_method_args, build_method
from model.backbones import build_backbone
from model.iic import MemoryBanks, normalize_imagenet, repeat_negative, residual_frames, shuffle_negative
from model.weights import load_backbone
from utils import distributed
from utils.checkpoint_io import load_checkpoint

BATCH = 4
NUM_VIDEOS = 15  # the tiny demo's train split


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_method_args(parser)
    return parser.parse_args(["--model", "iic", "--net", "r3d", "--base-width", "8", "--bank-k", "16", *argv])


def tiny_iic(*argv: str, num_videos: int = NUM_VIDEOS, seed: int = 0):
    torch.manual_seed(seed)
    return build_method(parse(*argv), num_videos=num_videos)


def numbered_clip(batch: int = 2, frames: int = 8) -> torch.Tensor:
    """(B, 3, T, 2, 2) clips whose frame t of sample b is filled with (10·b + t) / 100."""
    values = (10 * torch.arange(batch).view(batch, 1) + torch.arange(frames)) / 100  # (B, T)
    return values.view(batch, 1, frames, 1, 1).expand(batch, 3, frames, 2, 2).clone()


def frame_values(clip: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B, T) the value of each frame (frames are constant), asserting constancy."""
    first = clip[:, :1, :, :1, :1]
    assert torch.equal(clip, first.expand_as(clip))
    return first.flatten(1)


def test_residual_frames_wrap_and_no_wrap():
    clip = numbered_clip(frames=5) ** 2  # non-constant differences
    x = frame_values(clip)  # (B, T)
    wrapped = frame_values(residual_frames(clip))
    for t in range(5):
        torch.testing.assert_close(wrapped[:, t], (x[:, t] - x[:, t - 1] + 1) / 2)  # t = 0 uses the last frame
    unwrapped = frame_values(residual_frames(clip, wrap=False))
    torch.testing.assert_close(unwrapped[:, 1:], wrapped[:, 1:])
    torch.testing.assert_close(unwrapped[:, 0], unwrapped[:, 1])


def test_repeat_negative_tiles_one_frame_of_the_same_clip():
    clip = numbered_clip(batch=6)
    negative = frame_values(repeat_negative(clip, torch.Generator().manual_seed(0)))  # (B, T)
    x = frame_values(clip)
    for b in range(6):
        assert (negative[b] == negative[b, 0]).all()
        assert negative[b, 0] in x[b]
    again = frame_values(repeat_negative(clip, torch.Generator().manual_seed(0)))
    assert torch.equal(negative, again)
    picked = {int(round(float(v) * 100)) % 10 for v in frame_values(repeat_negative(
        numbered_clip(batch=8), torch.Generator().manual_seed(1)))[:, 0]}
    assert len(picked) > 1  # the frame is drawn per sample


def test_shuffle_negative_swaps_two_distinct_chunks():
    clip = numbered_clip(batch=16, frames=8)
    order = (frame_values(shuffle_negative(clip, torch.Generator().manual_seed(0))) * 100).round().long() % 10
    seen = set()
    for row in order:  # (T,) source frame of each output frame
        chunks = row.view(4, 2)
        assert torch.equal(chunks[:, 1] - chunks[:, 0], torch.ones(4, dtype=torch.long))  # order kept inside
        source = (chunks[:, 0] // 2).tolist()
        moved = [i for i in range(4) if source[i] != i]
        assert len(moved) == 2 and source[moved[0]] == moved[1] and source[moved[1]] == moved[0]
        seen.add(tuple(moved))
    assert len(seen) > 1
    with pytest.raises(ValueError, match="--num-frames 6 is not divisible by 4"):
        shuffle_negative(numbered_clip(frames=6))


def test_bank_init_update_and_renormalisation():
    torch.manual_seed(0)
    banks = MemoryBanks(("view1", "view2"), num_videos=5, dim=12, momentum=0.5)
    bound = 1 / (12 / 3) ** 0.5
    assert banks.view1.abs().max() <= bound and banks.view1.shape == (5, 12)
    before = {name: banks.bank(name).clone() for name in banks.names}
    index = torch.tensor([3, 0, 3])  # video 3 twice: its last feature wins
    features = {name: torch.randn(3, 12) for name in banks.names}
    banks.update(index, features)
    for name in banks.names:
        bank, old, f = banks.bank(name), before[name], features[name]
        torch.testing.assert_close(bank[0], F.normalize(0.5 * old[0] + 0.5 * f[1], dim=0))
        torch.testing.assert_close(bank[3], F.normalize(0.5 * old[3] + 0.5 * f[2], dim=0))
        torch.testing.assert_close(bank[[0, 3]].norm(dim=1), torch.ones(2))
        assert torch.equal(bank[[1, 2, 4]], old[[1, 2, 4]])


def test_bank_draw_puts_the_own_video_first_and_follows_the_global_rng():
    banks = MemoryBanks(("view1",), num_videos=50, dim=4, momentum=0.5)
    index = torch.tensor([7, 0, 49])
    torch.manual_seed(3)
    drawn = banks.draw(index, k=200)
    assert drawn.shape == (3, 201) and torch.equal(drawn[:, 0], index)
    assert drawn.min() >= 0 and drawn.max() < 50 and len(drawn[:, 1:].unique()) > 40  # uniform over the videos
    torch.manual_seed(3)
    assert torch.equal(banks.draw(index, k=200), drawn)  # resume-exact: the checkpoint saves this RNG


def test_logits_match_a_direct_computation_for_a_fixed_draw(monkeypatch):
    method = tiny_iic("--intra-neg", "repeat", "--bank-t", "0.1")
    k = method.k
    clip = torch.rand(BATCH, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    index = torch.tensor([5, 1, 7, 2])
    drawn = torch.randint(NUM_VIDEOS, (BATCH, k + 1), generator=torch.Generator().manual_seed(2))
    drawn[:, 0] = index
    monkeypatch.setattr(method.banks, "draw", lambda own, k_: drawn)
    banks = {name: method.banks.bank(name).clone() for name in method.banks.names}
    with torch.no_grad():
        f1 = method.encoder(normalize_imagenet(clip))
        f2 = method.encoder(residual_frames(clip))
        out = method(clip, index)

    def expected_loss(feature, other):
        logits = torch.empty(BATCH, 2 * k + 2)
        for b in range(BATCH):
            for j in range(k + 1):
                logits[b, j] = banks[other][drawn[b, j]] @ feature[b] / 0.1
                logits[b, k + 1 + j] = banks["intra_neg"][drawn[b, j]] @ feature[b] / 0.1
        return F.cross_entropy(logits, torch.zeros(BATCH, dtype=torch.long)), (logits.argmax(1) == 0).float().mean()

    loss1, acc1 = expected_loss(f1, "view2")
    loss2, acc2 = expected_loss(f2, "view1")
    torch.testing.assert_close(out["loss_view1"], loss1)
    torch.testing.assert_close(out["loss_view2"], loss2)
    torch.testing.assert_close(out["acc_view1"], acc1)
    torch.testing.assert_close(out["acc_view2"], acc2)
    # afterwards the rows of the batch moved, the others did not
    others = [i for i in range(NUM_VIDEOS) if i not in index.tolist()]
    for name in method.banks.names:
        assert not torch.allclose(method.banks.bank(name)[index], banks[name][index])
        assert torch.equal(method.banks.bank(name)[others], banks[name][others])


def test_checkpoint_round_trip_keeps_the_banks(tmp_path):
    method = tiny_iic()
    method(torch.rand(BATCH, 3, 8, 32, 32), torch.arange(BATCH))
    state = method.state_dict()
    assert {"banks.view1", "banks.view2", "banks.intra_neg"} <= set(state)
    torch.save(state, tmp_path / "iic.pth")
    restored = tiny_iic(seed=1)
    assert not torch.equal(restored.banks.view1, method.banks.view1)
    restored.load_state_dict(torch.load(tmp_path / "iic.pth"))
    for key, value in method.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


@pytest.mark.parametrize("modality", ["res", "rgb"])
@pytest.mark.parametrize("intra_neg", ["repeat", "shuffle", "none"])
def test_short_training_on_demo_data(tiny_demo, modality, intra_neg):
    dataset = build_dataset(tiny_demo_args(tiny_demo), "trainval", RECIPES["iic"])
    assert len(dataset) == NUM_VIDEOS
    method = tiny_iic("--modality", modality, "--intra-neg", intra_neg)
    assert method.banks.names == ("view1", "view2") + (("intra_neg",) if intra_neg != "none" else ())
    start = train_iic_steps(method, dataset, BATCH, momentum=0.9)
    for name in method.banks.names:  # rows 0..7 were updated, row 8 never seen
        bank = method.banks.bank(name)
        assert not torch.equal(bank[:8], start[f"banks.{name}"][:8])
        assert torch.equal(bank[8], start[f"banks.{name}"][8])
        torch.testing.assert_close(bank[:8].norm(dim=1), torch.ones(8))


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match=r"--modality u takes the flow clips.*got none"):
        tiny_iic("--modality", "u")(torch.rand(2, 3, 8, 32, 32), torch.arange(2))
    with pytest.raises(ValueError, match="--bank-t"):
        tiny_iic("--bank-t", "0")
    with pytest.raises(ValueError, match="num_videos"):
        tiny_iic(num_videos=None)(torch.rand(2, 3, 8, 32, 32), torch.arange(2))
    with pytest.raises(ValueError, match="another training set"):
        tiny_iic(num_videos=3)(torch.rand(2, 3, 8, 32, 32), torch.tensor([0, 3]))


def ssl_argv(root, output_dir, *extra):
    return [*tiny_demo_flags(root), "--output-dir", str(output_dir), "--model", "iic", "--net", "r3d",
            "--base-width", "8", "--bank-k", "8", "--batch-size", "4", "--epochs", "2", "--lr", "0.01",
            "--seed", "3", "--log-every", "1", "--device", "cpu", *extra]


def test_train_ssl_runs_iic_resumes_exactly_and_feeds_finetuning(tiny_demo, tmp_path):
    def run(output_dir, *extra):
        train_ssl.main(train_ssl.get_args_parser().parse_args(ssl_argv(tiny_demo, output_dir, *extra)))
        return load_checkpoint(output_dir / "checkpoint.pth")

    full = run(tmp_path / "full")
    config = json.loads((tmp_path / "full" / "config.json").read_text())["config"]["resolved"]
    assert config["sampler"] == "iic" and config["memory_banks"]["view1"] == [NUM_VIDEOS, 64]
    assert "banks.intra_neg" in full["model"]
    lines = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert {"loss_view1", "loss_view2", "acc_view1", "acc_view2"} <= set(lines[0])

    run(tmp_path / "resumed", "--epochs", "1")
    resumed = run(tmp_path / "resumed")
    for key, value in full["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6, msg=key)

    backbone, _ = build_backbone("r3d", 8)
    assert load_backbone(backbone, tmp_path / "full" / "checkpoint.pth") > 0
    torch.testing.assert_close(backbone.state_dict(), {k[len("encoder.backbone."):]: v for k, v in
                                                       full["model"].items() if k.startswith("encoder.backbone.")})


def test_dry_run_for_iic(tmp_path, capsys):
    train_ssl.main(train_ssl.get_args_parser().parse_args([
        "--dry-run", "--dataset", str(tmp_path / "no_such_dataset"), "--output-dir", str(tmp_path / "out"),
        "--model", "iic", "--intra-neg", "none", "--base-width", "8"]))
    config = json.loads(capsys.readouterr().out)
    resolved = config["resolved"]
    assert resolved["sampler"] == "iic"
    assert resolved["loss_weights"] == {"loss_view1": 1.0, "loss_view2": 1.0}
    assert set(resolved["memory_banks"]) == {"view1", "view2"}
    assert (config["modality"], config["bank_k"], config["bank_t"], config["bank_momentum"]) == ("res", 1024, 0.07, 0.5)
    assert not (tmp_path / "out").exists()


WORLD_SIZE = 2


def _bank_worker(rank, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init_distributed(argparse.Namespace(device="cpu", dist_backend="gloo"))
    method = tiny_iic()  # same seed: same initial banks on both processes
    torch.manual_seed(100 + rank)  # different index draws and intra-negatives per process
    clip = torch.rand(BATCH, 3, 8, 32, 32, generator=torch.Generator().manual_seed(rank))
    index = torch.arange(BATCH) + BATCH * rank  # disjoint videos per process
    out = method(clip, index)
    torch.save({"banks": {name: method.banks.bank(name).clone() for name in method.banks.names},
                "loss": out["loss_view1"].detach()}, os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.barrier()
    distributed.cleanup()


def test_banks_stay_identical_under_two_gloo_processes(tmp_path):
    results = run_gloo_processes(_bank_worker, tmp_path, WORLD_SIZE, start_method="fork")
    start = tiny_iic().banks
    for name in start.names:
        assert torch.equal(results[0]["banks"][name], results[1]["banks"][name])
        # every process wrote the rows of both processes' videos, and nothing else
        changed = (results[0]["banks"][name] != start.bank(name)).any(dim=1)
        assert changed.tolist() == [True] * (WORLD_SIZE * BATCH) + [False] * (NUM_VIDEOS - WORLD_SIZE * BATCH)
