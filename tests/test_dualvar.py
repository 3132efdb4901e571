import argparse
import copy
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import RECIPES, run_gloo_processes, tiny_demo_args
from dataset.build import build_dataset
from model import add_method_args, build_method
from model.dualvar import MODES
from model.losses import calibrate, shuffle_rank_loss, shuffle_segments
from utils import distributed

BATCH = 4
CLIP = (3, 8, 32, 32)  # (C, T, H, W)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_method_args(parser)
    return parser.parse_args(["--net", "r3d", "--base-width", "8", *argv])


def tiny_method(*argv: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_method(parse(*argv))


def random_clips(method, batch: int = BATCH, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, method.num_views, *CLIP, generator=generator)  # (B, V, 3, T, H, W)


def demo_batch(root, num_views: int) -> torch.Tensor:
    """The first BATCH items of the demo train split through the real sampler: (B, V, 3, T, H, W)."""
    dataset = build_dataset(tiny_demo_args(root), "trainval", RECIPES[{3: "dualvar", 2: "two_view"}[num_views]])
    batch = torch.stack([dataset[i]["clips"] for i in range(BATCH)])
    assert batch.shape == (BATCH, num_views, *CLIP)
    return batch


def weighted_loss(method, out: dict) -> torch.Tensor:
    return sum(method.loss_weights[name] * out[name] for name in method.loss_weights)


def test_defaults_are_the_published_ones():
    parser = argparse.ArgumentParser()
    add_method_args(parser)
    args = parser.parse_args([])
    assert (args.model, args.mode, args.net, args.base_width) == ("simclr", "clip-sr-tc", "r21d", 64)
    assert (args.temperature, args.tc_temperature, args.theta, args.rank_clamp) == (0.07, 0.07, 0.05, 5.0)
    assert (args.n_series, args.series_dim, args.embed_dim, args.derangement) == (2, 64, 128, False)
    assert (args.clip_loss_weight, args.sr_loss_weight, args.tc_loss_weight) == (1.0, 1.0, 1.0)
    assert (args.moco_k, args.moco_m) == (16384, 0.999)
    assert (args.sr_variant, args.plant_bug) == ("published", "none")
    assert parser.parse_args(["--rank-clamp", "none"]).rank_clamp is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--rank-clamp", "big"])


@pytest.mark.parametrize("model", ["simclr", "moco"])
@pytest.mark.parametrize("mode", MODES)
def test_every_method_and_mode_trains_on_a_fixed_batch_of_demo_data(tiny_demo, model, mode):
    # K = 2 batches, so the queue holds real keys after two steps
    method = tiny_method("--model", model, "--mode", mode, "--moco-k", "8", "--moco-m", "0.9",
                         "--clip-loss-weight", "0.5")
    has_sr, has_tc = "sr" in mode, "tc" in mode
    assert method.num_views == (3 if has_sr else 2)
    expected_terms = {"loss_clip"} | ({"loss_sr"} if has_sr else set()) | ({"loss_tc"} if has_tc else set())
    assert set(method.loss_weights) == expected_terms and method.loss_weights["loss_clip"] == 0.5
    assert (method.encoder.series_head is None) == (mode == "clip")

    clips = demo_batch(tiny_demo, method.num_views)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(20):
        torch.manual_seed(step % 2)  # the same permutations every other step: a fixed batch, up to MoCo's queue
        out = method(clips)
        assert {name for name in out if name.startswith("loss_")} == expected_terms
        assert {"acc_clip", "acc_rank"} & set(out) == ({"acc_clip", "acc_rank"} if has_sr else {"acc_clip"})
        # the split rank accuracies are NaN in a batch without a sample of their kind
        assert all(value.dim() == 0 and value.dtype == torch.float32
                   and (torch.isfinite(value) or name in ("acc_rank_identity", "acc_rank_shuffled"))
                   for name, value in out.items())
        loss = weighted_loss(method, out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # MoCo's first steps compare against a queue of random vectors; start once it holds real keys.
    # Windows of 4 steps cover both alternating permutation draws.
    start = 2 if model == "moco" else 0
    assert sum(losses[-4:]) < 0.9 * sum(losses[start:start + 4]), losses


@pytest.mark.parametrize("model", ["simclr", "moco"])
def test_losses_stay_fp32_under_bf16_autocast(model):
    method = tiny_method("--model", model, "--mode", "clip-sr-tc", "--moco-k", "8")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(random_clips(method))
    weighted_loss(method, out).backward()
    assert all(value.dtype == torch.float32 and (torch.isfinite(value) or name.startswith("acc_rank_"))
               for name, value in out.items())


def test_simclr_shuffle_rank_term_is_wired_as_specified():
    method = tiny_method("--model", "simclr", "--mode", "clip-sr")
    clips = random_clips(method)
    torch.manual_seed(5)
    out = method(clips)

    torch.manual_seed(5)
    shuffled, permutations = shuffle_segments(clips[:, 2], 2)
    _, series = method.encoder(clips.transpose(0, 1).flatten(0, 1))  # (3B, n, d): A, B, A′
    _, shuffled_series = method.encoder(shuffled)
    s_a, s_a_prime = F.normalize(series[:BATCH], dim=-1), F.normalize(series[2 * BATCH:], dim=-1)
    p = F.normalize(calibrate(shuffled_series, permutations), dim=-1)
    expected = 0.5 * shuffle_rank_loss(s_a, p, 0.05, 5.0) + 0.5 * shuffle_rank_loss(s_a_prime, p, 0.05, 5.0)
    assert torch.allclose(out["loss_sr"], expected, atol=1e-6)
    assert not torch.allclose(out["loss_sr"], shuffle_rank_loss(F.normalize(series[BATCH:2 * BATCH], dim=-1), p))


def test_moco_key_encoder_follows_momentum_not_the_optimizer():
    method = tiny_method("--model", "moco", "--mode", "clip-sr-tc", "--moco-k", "8", "--moco-m", "0.9")
    assert all(not p.requires_grad for p in method.key_encoder.parameters())
    # the optimizer gets every parameter: the key encoder must still only move by momentum
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5)
    clips = random_clips(method)
    for _ in range(2):
        query_before = [p.detach().clone() for p in method.encoder.parameters()]
        key_before = [p.detach().clone() for p in method.key_encoder.parameters()]
        loss = weighted_loss(method, method(clips))
        key_after_forward = [p.detach().clone() for p in method.key_encoder.parameters()]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for k_old, q_old, k_new, k_final in zip(key_before, query_before, key_after_forward,
                                                method.key_encoder.parameters()):
            assert torch.allclose(k_new, 0.9 * k_old + 0.1 * q_old, atol=1e-6)
            assert torch.equal(k_final, k_new) and k_final.grad is None
        assert any(not torch.equal(q_old, q) for q_old, q in zip(query_before, method.encoder.parameters()))


def test_moco_queue_holds_the_latest_keys():
    # one BatchNorm batch, so that the keys can be recomputed below (the sub-batch shuffle is tested elsewhere)
    method = tiny_method("--model", "moco", "--mode", "clip-tc", "--moco-k", "8", "--moco-bn-splits", "1")
    state = method.state_dict()
    assert state["clip_queue"].shape == (8, 128) and state["series_queue"].shape == (8, 2, 64)
    assert state["queue_ptr"].tolist() == [0]
    for step, (start, end) in enumerate([(0, 4), (4, 8), (0, 4)]):
        clips = random_clips(method, seed=step)
        method(clips)
        assert method.queue_ptr.item() == end % 8
        with torch.no_grad():  # the key encoder in train mode again: same batch statistics, same keys
            z_k, series_k = method.key_encoder(clips[:, 1])
        assert torch.allclose(method.clip_queue[start:end], z_k, atol=1e-6)
        assert torch.allclose(method.series_queue[start:end], F.normalize(series_k, dim=-1), atol=1e-6)


def test_moco_queue_must_be_a_multiple_of_the_global_batch():
    method = tiny_method("--model", "moco", "--mode", "clip", "--moco-k", "10")
    with pytest.raises(ValueError, match=r"--moco-k 10 .* global batch 4"):
        method(random_clips(method))


def test_bad_inputs_and_flags_name_the_fix():
    method = tiny_method("--model", "simclr", "--mode", "clip-sr-tc")
    with pytest.raises(ValueError, match="dualvar"):
        method(torch.randn(BATCH, 2, *CLIP))
    with pytest.raises(ValueError, match="--num-frames 9 .* --n-series 2"):
        method(torch.randn(BATCH, 3, 3, 9, 32, 32))
    with pytest.raises(ValueError, match="--n-series"):
        tiny_method("--mode", "clip-sr", "--n-series", "1")
    with pytest.raises(ValueError, match="--temperature"):
        tiny_method("--temperature", "0")


WORLD_SIZE = 2


def _moco_worker(rank, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init_distributed(argparse.Namespace(device="cpu", dist_backend="gloo"))
    method = tiny_method("--model", "moco", "--mode", "clip-tc", "--moco-k", "16")
    clips = random_clips(method, seed=10 + rank)
    torch.manual_seed(rank)  # different global RNG per process: the BN-shuffle permutation must come from rank 0
    # In eval mode BatchNorm is per-sample, so shuffling across processes and back must return plain keys.
    frozen = copy.deepcopy(method.key_encoder).eval()
    method.key_encoder.eval()
    keys, series = method.encode_keys(clips[:, 1])
    with torch.no_grad():
        expected_keys, expected_series = frozen(clips[:, 1])
    method.train()
    # In train mode the key encoder's batch must mix the processes' rows (shuffle-BN): record what it saw.
    seen = []
    method.key_encoder.register_forward_hook(lambda _, inputs, output: seen.append((inputs[0].clone(), output[0])))
    out = method(clips)
    torch.save({"keys": keys, "series": series, "expected_keys": expected_keys, "expected_series": expected_series,
                "loss": {name: value for name, value in out.items()}, "clip_queue": method.clip_queue.clone(),
                "queue_ptr": method.queue_ptr.clone(), "key_view": clips[:, 1], "key_encoder_input": seen[0][0],
                "key_encoder_output": seen[0][1]}, os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.barrier()
    distributed.cleanup()


def test_moco_shuffle_bn_and_queue_under_two_gloo_processes(tmp_path):
    results = run_gloo_processes(_moco_worker, tmp_path, WORLD_SIZE, start_method="fork")
    for result in results:
        assert torch.allclose(result["keys"], result["expected_keys"], atol=1e-6)
        assert torch.allclose(result["series"], result["expected_series"], atol=1e-6)
        assert all(torch.isfinite(value) for value in result["loss"].values())
        assert result["queue_ptr"].item() == 2 * BATCH  # the global batch of 2 × B keys was enqueued
    # both processes enqueue the same gathered keys, so the queues stay identical
    assert torch.equal(results[0]["clip_queue"], results[1]["clip_queue"])

    # train mode: each key encoder saw B rows of the global batch, some of them the other process's, and
    # every key came back to its own sample: queue row r·B + i is the key of process r's sample i
    global_rows = torch.cat([result["key_view"] for result in results])  # (2B, 3, T, H, W)
    encoded_at = {}
    for rank, result in enumerate(results):
        assert len(result["key_encoder_input"]) == BATCH
        for position, row in enumerate(result["key_encoder_input"]):
            (owner,) = [g for g in range(2 * BATCH) if torch.equal(row, global_rows[g])]
            encoded_at[owner] = (rank, position)
        assert any(owner // BATCH != rank for owner, (r, _) in encoded_at.items() if r == rank), \
            f"process {rank}'s key encoder saw only its own rows: no shuffle-BN"
    assert sorted(encoded_at) == list(range(2 * BATCH))
    for owner, (rank, position) in encoded_at.items():
        torch.testing.assert_close(results[0]["clip_queue"][owner], results[rank]["key_encoder_output"][position])
