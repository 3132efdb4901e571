"""Value tests of the methods on a fixed batch (METHOD.md §5, §6).

Every loss term of SimCLR, MoCo (all four modes) and IIC is recomputed here with explicit loops over
anchors, keys and segments, written from METHOD.md and never through the code's own loss helpers, from
embeddings of the views the specification names. Values and parameter gradients must agree, and every
hyperparameter that could be swapped with another gets a value of its own.
"""

import argparse
import copy

import pytest
import torch

from model import add_method_args, build_method
from model.dualvar import MODES

BATCH = 4
CLIP = (3, 8, 32, 32)  # (C, T, H, W)
N_SERIES = 4  # not 2: every permutation of 2 segments is its own inverse, which would hide a swapped σ
MEAN = (0.485, 0.456, 0.406)  # ImageNet, METHOD.md §3
STD = (0.229, 0.224, 0.225)
# Distinct values: a swap of any two of them changes the losses.
DUALVAR_FLAGS = ("--temperature", "0.3", "--tc-temperature", "0.11", "--theta", "0.13", "--rank-clamp", "2.5",
                 "--n-series", str(N_SERIES), "--series-dim", "5", "--embed-dim", "6")
MOCO_K, MOCO_M = 8, 0.9
IIC_T, IIC_M, IIC_K = 0.2, 0.3, 6

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(*argv: str, num_videos: int | None = None, seed: int = 0):
    parser = argparse.ArgumentParser()
    add_method_args(parser)
    torch.manual_seed(seed)
    return build_method(parser.parse_args(["--net", "r3d", "--base-width", "4", *argv]), num_videos=num_videos)


def fixed_clips(views: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(BATCH, views, *CLIP, generator=torch.Generator().manual_seed(seed))  # (B, V, 3, T, H, W)


def record_calls(module):
    """Inputs and outputs of every forward of ``module``; output tensors keep their gradient."""
    calls = []

    def hook(_, inputs, output):
        for tensor in output if isinstance(output, tuple) else (output,):
            if tensor is not None and tensor.requires_grad:
                tensor.retain_grad()
        calls.append((inputs[0].detach().clone(), output))

    return calls, module.register_forward_hook(hook)


# ---------------------------------------------------------------- references written from METHOD.md

def unit(v):
    return v / v.norm()


def nt_xent_reference(view_a, view_b, temperature, similarity):
    """NT-Xent over 2N items: positive = the other view of the sample, every other item but itself a negative."""
    items = list(view_a) + list(view_b)
    n = len(view_a)
    total = 0.0
    for i, x in enumerate(items):
        positive = torch.exp(similarity(x, items[(i + n) % (2 * n)]) / temperature)
        others = sum(torch.exp(similarity(x, items[k]) / temperature) for k in range(2 * n) if k != i)
        total = total - torch.log(positive / others)
    return total / (2 * n)


def clip_similarity(x, y):
    return x @ y


def series_similarity(x, y):
    """S(x, y) = (1/n²) Σ_j Σ_k s_j(x)·s_k(y) on series (n, d) of unit vectors."""
    n = len(x)
    return sum(x[j] @ y[k] for j in range(n) for k in range(n)) / n ** 2


def unit_series(series):
    """(B, n, d) -> each of the n vectors of each sample L2-normalised, by loops."""
    return torch.stack([torch.stack([unit(vector) for vector in sample]) for sample in series])


def rank_reference(reference, calibrated, theta, clamp):
    """Rank(r, p) of METHOD.md §5.1 step 4, mean over samples, anchors and their 2n − 2 negatives."""
    total, count = 0.0, 0
    for r, p in zip(reference, calibrated):
        rows = list(r) + list(p)
        n = len(r)
        for a in range(2 * n):
            positive = a + n if a < n else a - n
            for c in range(2 * n):
                if c in (a, positive):
                    continue
                margin = torch.clamp((rows[a] @ rows[c] - rows[a] @ rows[positive]) / theta, max=clamp)
                total = total + torch.log1p(torch.exp(margin))
                count += 1
    return total / count


def segment_permutation(shuffled, original, n):
    """σ with slot j of ``shuffled`` holding segment σ(j) of ``original``, found by comparing pixels."""
    length = original.shape[2] // n
    sigma = []
    for s, o in zip(shuffled, original):
        slots = [[k for k in range(n) if torch.equal(s[:, j * length:(j + 1) * length],
                                                     o[:, k * length:(k + 1) * length])] for j in range(n)]
        assert all(len(match) == 1 for match in slots), "the shuffled clip is not a segment shuffle of A'"
        sigma.append([match[0] for match in slots])
    return sigma


def shuffled_by_hand(original, sigma, n):
    length = original.shape[2] // n
    return torch.stack([torch.cat([o[:, k * length:(k + 1) * length] for k in row], dim=1)
                        for o, row in zip(original, sigma)])


def calibrate_by_hand(series, sigma):
    """p[σ(j)] = f[j], then each vector normalised."""
    out = []
    for f, row in zip(series, sigma):
        p = [None] * len(row)
        for j, k in enumerate(row):
            p[k] = unit(f[j])
        out.append(torch.stack(p))
    return torch.stack(out)


def cross_entropy_at_zero(logits):
    """−log softmax(logits)[0], for one row of logits."""
    return -(logits[0] - torch.logsumexp(torch.stack(list(logits)), dim=0))


def assert_same_gradients(loss, expected, parameters):
    parameters = [p for p in parameters if p.requires_grad]
    got = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(expected, parameters, retain_graph=True, allow_unused=True)
    for g, w in zip(got, want):
        g = torch.zeros_like(w) if g is None and w is not None else g
        w = torch.zeros_like(g) if w is None and g is not None else w
        if g is not None:
            # float32 sums in another order: a tolerance relative to the tensor's largest gradient
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * float(w.abs().max()) + 1e-8)
    assert any(w is not None and w.abs().sum() > 0 for w in want)


def assert_every_row_has_gradient(tensor, rows, what):
    grad = tensor.grad[rows].flatten(1)
    assert (grad.abs().sum(dim=1) > 0).all(), f"{what}: some rows received no gradient"


# ---------------------------------------------------------------- SimCLR

@pytest.mark.parametrize("mode", MODES)
def test_simclr_losses_and_gradients_match_loop_references(mode):
    method = build("--model", "simclr", "--mode", mode, *DUALVAR_FLAGS)
    use_sr, use_tc = "sr" in mode, "tc" in mode
    clips = fixed_clips(method.num_views)
    views = [clips[:, v] for v in range(method.num_views)]  # A, B (, A′)
    calls, handle = record_calls(method.encoder)
    torch.manual_seed(3)
    out = method(clips)
    handle.remove()

    # one pass over A, B (and A′) together, as specified: BatchNorm sees them in one batch
    z, series = method.encoder(torch.cat(views))
    z_a, z_b = z[:BATCH], z[BATCH:2 * BATCH]
    expected = {"loss_clip": nt_xent_reference(z_a, z_b, 0.3, clip_similarity)}
    if use_tc or use_sr:
        s = unit_series(series)
    if use_tc:
        expected["loss_tc"] = nt_xent_reference(s[:BATCH], s[BATCH:2 * BATCH], 0.11, series_similarity)
    if use_sr:
        assert len(calls) == 2
        sigma = segment_permutation(calls[1][0], views[2], N_SERIES)
        _, shuffled_series = method.encoder(shuffled_by_hand(views[2], sigma, N_SERIES))
        p = calibrate_by_hand(shuffled_series, sigma)
        expected["loss_sr"] = 0.5 * rank_reference(s[:BATCH], p, 0.13, 2.5) \
            + 0.5 * rank_reference(s[2 * BATCH:], p, 0.13, 2.5)

    assert {name for name in out if name.startswith("loss_")} == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(out[name], value, rtol=1e-5, atol=1e-6, msg=name)
        assert_same_gradients(out[name], value, method.parameters())

    # each view's embedding receives a gradient from the terms that use it
    sum(out[name] for name in expected).backward()
    z_seen, series_seen = calls[0][1]
    assert_every_row_has_gradient(z_seen, slice(0, 2 * BATCH), "clip embeddings of A and B")
    if use_tc:
        assert_every_row_has_gradient(series_seen, slice(0, 2 * BATCH), "series of A and B")
    if use_sr:
        assert_every_row_has_gradient(series_seen, slice(0, BATCH), "series of A")
        assert_every_row_has_gradient(series_seen, slice(2 * BATCH, 3 * BATCH), "series of A′")
        assert_every_row_has_gradient(calls[1][1][1], slice(0, BATCH), "series of shuffled A′")


@pytest.mark.parametrize("bug", ["positive-other-video", "sr-wrong-permutation", "tc-other-video"])
def test_planted_bugs_break_exactly_their_term_as_described(bug):
    """The miniature's mutants (train_ssl.py --plant-bug): each changes one term, to its loop reference with the
    bug written out (view B of the previous sample; the permutation σ(j − 1); the previous sample's series)."""
    method = build("--model", "simclr", "--mode", "clip-sr-tc", *DUALVAR_FLAGS, "--plant-bug", bug)
    clips = fixed_clips(method.num_views)
    views = [clips[:, v] for v in range(3)]
    calls, handle = record_calls(method.encoder)
    torch.manual_seed(3)
    out = method(clips)
    handle.remove()

    z, series = method.encoder(torch.cat(views))
    s = unit_series(series)
    other = [BATCH - 1, *range(BATCH - 1)]  # the previous sample, the first taking the last
    z_b, s_b = z[BATCH:2 * BATCH], s[BATCH:2 * BATCH]
    sigma = segment_permutation(calls[1][0], views[2], N_SERIES)  # the permutation applied
    targets = [row[-1:] + row[:-1] for row in sigma] if bug == "sr-wrong-permutation" else sigma
    assert all(t != row for t, row in zip(targets, sigma)) or bug != "sr-wrong-permutation"
    _, shuffled_series = method.encoder(shuffled_by_hand(views[2], sigma, N_SERIES))
    p = calibrate_by_hand(shuffled_series, targets)
    expected = {
        "loss_clip": nt_xent_reference(z[:BATCH], z_b[other] if bug == "positive-other-video" else z_b, 0.3,
                                       clip_similarity),
        "loss_tc": nt_xent_reference(s[:BATCH], s_b[other] if bug == "tc-other-video" else s_b, 0.11,
                                     series_similarity),
        "loss_sr": 0.5 * rank_reference(s[:BATCH], p, 0.13, 2.5) + 0.5 * rank_reference(s[2 * BATCH:], p, 0.13, 2.5),
    }
    for name, value in expected.items():
        torch.testing.assert_close(out[name], value, rtol=1e-5, atol=1e-6, msg=name)
    correct = build("--model", "simclr", "--mode", "clip-sr-tc", *DUALVAR_FLAGS)
    torch.manual_seed(3)
    unplanted = correct(clips)
    broken = {"positive-other-video": "loss_clip", "sr-wrong-permutation": "loss_sr", "tc-other-video": "loss_tc"}
    for name in expected:
        assert torch.allclose(out[name], unplanted[name]) == (name != broken[bug]), name


def test_a_planted_bug_needs_the_term_it_breaks():
    with pytest.raises(ValueError, match="breaks the 'sr' term, which --mode clip-tc does not have"):
        build("--model", "simclr", "--mode", "clip-tc", "--plant-bug", "sr-wrong-permutation")


# ---------------------------------------------------------------- MoCo

@pytest.mark.parametrize("mode", MODES)
def test_moco_losses_and_gradients_match_loop_references(mode):
    method = build("--model", "moco", "--mode", mode, *DUALVAR_FLAGS, "--moco-k", str(MOCO_K),
                   "--moco-m", str(MOCO_M), "--moco-bn-splits", "1")  # one BN batch: the reference recomputes it
    use_sr, use_tc = "sr" in mode, "tc" in mode
    with torch.no_grad():  # a key encoder unlike the query encoder, so that the momentum update shows
        for parameter in method.key_encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    clip_queue = method.clip_queue.clone()
    series_queue = method.series_queue.clone() if use_tc else None
    key_encoder = copy.deepcopy(method.key_encoder)
    with torch.no_grad():  # key ← m·key + (1 − m)·query before the keys are computed
        for key, query in zip(key_encoder.parameters(), method.encoder.parameters()):
            key.copy_(MOCO_M * key + (1 - MOCO_M) * query)
    clips = fixed_clips(method.num_views)
    query_view, key_view = clips[:, 0], clips[:, 1]
    calls, handle = record_calls(method.encoder)
    torch.manual_seed(3)
    out = method(clips)
    handle.remove()

    z_q, series_q = method.encoder(query_view)
    with torch.no_grad():
        z_k, series_k = key_encoder(key_view)

    def moco_reference(queries, keys, queue, temperature, similarity):
        total = 0.0
        for q, k in zip(queries, keys):
            logits = [similarity(q, k) / temperature] + [similarity(q, negative) / temperature for negative in queue]
            total = total + cross_entropy_at_zero(logits)
        return total / len(queries)

    expected = {"loss_clip": moco_reference(z_q, z_k, clip_queue, 0.3, clip_similarity)}
    if use_tc:
        expected["loss_tc"] = moco_reference(unit_series(series_q), unit_series(series_k), series_queue, 0.11,
                                             series_similarity)
    if use_sr:
        a_prime = clips[:, 2]
        assert len(calls) == 2
        sigma = segment_permutation(calls[1][0][BATCH:], a_prime, N_SERIES)
        _, pair = method.encoder(torch.cat([a_prime, shuffled_by_hand(a_prime, sigma, N_SERIES)]))  # one batch of 2B
        p = calibrate_by_hand(pair[BATCH:], sigma)
        expected["loss_sr"] = 0.5 * rank_reference(unit_series(series_q), p, 0.13, 2.5) \
            + 0.5 * rank_reference(unit_series(pair[:BATCH]), p, 0.13, 2.5)

    assert {name for name in out if name.startswith("loss_")} == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(out[name], value, rtol=1e-5, atol=1e-6, msg=name)
        assert_same_gradients(out[name], value, method.encoder.parameters())
    # the queue now starts with this batch's keys
    torch.testing.assert_close(method.clip_queue[:BATCH], z_k, rtol=0, atol=1e-6)
    torch.testing.assert_close(method.clip_queue[BATCH:], clip_queue[BATCH:], rtol=0, atol=0)

    sum(out[name] for name in expected).backward()
    z_seen, series_seen = calls[0][1]
    assert_every_row_has_gradient(z_seen, slice(0, BATCH), "query clip embeddings")
    if use_tc or use_sr:
        assert_every_row_has_gradient(series_seen, slice(0, BATCH), "query series")
    if use_sr:
        assert_every_row_has_gradient(calls[1][1][1], slice(0, 2 * BATCH), "series of A′ and shuffled A′")


def negative_reference(reference, unshuffled, shuffled, theta, clamp):
    """--sr-variant negative: mean over samples and slots of softplus(min((r_j·u_j − r_j·p_j) / θ, clamp)), with
    p the un-shuffled series and u the shuffled one's, slot by slot (no calibration)."""
    total, count = 0.0, 0
    for r, p, u in zip(reference, unshuffled, shuffled):
        for j in range(len(r)):
            total = total + torch.log1p(torch.exp(torch.clamp((r[j] @ u[j] - r[j] @ p[j]) / theta, max=clamp)))
            count += 1
    return total / count


@pytest.mark.parametrize("model", ["simclr", "moco"])
def test_negative_shuffle_rank_variant_matches_its_loop_reference(model):
    moco = ("--moco-k", str(MOCO_K), "--moco-m", str(MOCO_M), "--moco-bn-splits", "1") if model == "moco" else ()
    method = build("--model", model, "--mode", "clip-sr", *DUALVAR_FLAGS, "--sr-variant", "negative", *moco)
    clips = fixed_clips(method.num_views)
    a_prime = clips[:, 2]
    calls, handle = record_calls(method.encoder)
    torch.manual_seed(3)
    out = method(clips)
    handle.remove()

    if model == "simclr":  # A, B, A′ in one pass, then shuffled A′
        _, series = method.encoder(torch.cat([clips[:, 0], clips[:, 1], a_prime]))
        s_a, s_a_prime = unit_series(series[:BATCH]), unit_series(series[2 * BATCH:])
        shuffled_input = calls[1][0]
    else:  # the query A, then A′ and shuffled A′ in one batch
        s_a = unit_series(method.encoder(clips[:, 0])[1])
        shuffled_input = calls[1][0][BATCH:]
    sigma = segment_permutation(shuffled_input, a_prime, N_SERIES)
    assert all(all(row[j] != j for j in range(N_SERIES)) for row in sigma), "not derangements"
    if model == "simclr":
        _, shuffled_series = method.encoder(shuffled_by_hand(a_prime, sigma, N_SERIES))
    else:
        _, pair = method.encoder(torch.cat([a_prime, shuffled_by_hand(a_prime, sigma, N_SERIES)]))
        s_a_prime, shuffled_series = unit_series(pair[:BATCH]), pair[BATCH:]
    expected = negative_reference(s_a, s_a_prime, unit_series(shuffled_series), 0.13, 2.5)
    torch.testing.assert_close(out["loss_sr"], expected, rtol=1e-5, atol=1e-6)
    assert_same_gradients(out["loss_sr"], expected, method.encoder.parameters())
    # a gradient reaches the backbone through the un-shuffled and the shuffled view
    out["loss_sr"].backward()
    if model == "simclr":
        assert_every_row_has_gradient(calls[0][1][1], slice(2 * BATCH, 3 * BATCH), "series of A′")
        assert_every_row_has_gradient(calls[1][1][1], slice(0, BATCH), "series of shuffled A′")
    else:
        assert_every_row_has_gradient(calls[1][1][1], slice(0, 2 * BATCH), "series of A′ and shuffled A′")


# ---------------------------------------------------------------- IIC

def normalised_by_hand(clip):
    return torch.stack([(clip[:, c] - MEAN[c]) / STD[c] for c in range(3)], dim=1)


def residual_by_hand(clip):
    """r_t = (x_t − x_{t−1} + 1) / 2, r_0 from the last frame (circular)."""
    frames = clip.shape[2]
    return torch.stack([(clip[:, :, t] - clip[:, :, (t - 1) % frames] + 1) / 2 for t in range(frames)], dim=2)


@pytest.mark.parametrize("modality, intra_neg", [("res", "repeat"), ("rgb", "repeat"), ("u", "repeat"),
                                                 ("v", "shuffle"), ("res", "none")])
def test_iic_losses_gradients_and_bank_updates_match_loop_references(modality, intra_neg):
    num_videos = 10
    method = build("--model", "iic", "--modality", modality, "--intra-neg", intra_neg, "--bank-k", str(IIC_K),
                   "--bank-t", str(IIC_T), "--bank-momentum", str(IIC_M), num_videos=num_videos)
    generator = torch.Generator().manual_seed(4)
    clip = torch.rand(BATCH, *CLIP, generator=generator)  # [0, 1], as the "iic" sampler gives
    flow = torch.rand(BATCH, *CLIP, generator=generator) if modality in ("u", "v") else None
    index = torch.tensor([7, 2, 9, 4])
    banks = {name: method.banks.bank(name).clone() for name in method.banks.names}
    draws = []
    real_draw = method.banks.draw
    method.banks.draw = lambda own, k: draws.append(real_draw(own, k)) or draws[-1]
    calls, handle = record_calls(method.encoder)
    out = method(clip, index) if flow is None else method(clip, index, flow)
    handle.remove()

    f1 = method.encoder(normalised_by_hand(clip))
    view2 = {"res": residual_by_hand(clip), "rgb": normalised_by_hand(clip), "u": flow, "v": flow}[modality]
    f2 = method.encoder(view2)
    (drawn,) = draws
    assert drawn.shape == (BATCH, IIC_K + 1) and torch.equal(drawn[:, 0], index)
    negative_banks = ["intra_neg"] if intra_neg != "none" else []

    def bank_loss(feature, other):
        total = 0.0
        for b in range(BATCH):
            logits = [banks[name][drawn[b, j]] @ feature[b] / IIC_T
                      for name in [other] + negative_banks for j in range(IIC_K + 1)]
            total = total + cross_entropy_at_zero(logits)
        return total / BATCH

    expected = {"loss_view1": bank_loss(f1, "view2"), "loss_view2": bank_loss(f2, "view1")}
    assert {name for name in out if name.startswith("loss_")} == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(out[name], value, rtol=1e-5, atol=1e-5, msg=name)
        assert_same_gradients(out[name], value, method.parameters())

    features = {"view1": f1.detach(), "view2": f2.detach()}
    if intra_neg != "none":
        negative = calls[2][0]  # the intra-negative the code built: check it, then embed it
        rgb = normalised_by_hand(clip)
        for b in range(BATCH):
            frames = [negative[b, :, t] for t in range(CLIP[1])]
            originals = [rgb[b, :, t] for t in range(CLIP[1])]
            if intra_neg == "repeat":
                assert any(all(torch.allclose(f, o, atol=1e-6) for f in frames) for o in originals)
            else:
                moved = [t for t in range(CLIP[1]) if not torch.allclose(frames[t], originals[t], atol=1e-6)]
                assert len(moved) == 2 * CLIP[1] // 4  # two chunks of T/4 frames swapped
        with torch.no_grad():
            features["intra_neg"] = method.encoder(negative)
    for name, feature in features.items():  # row ← normalise(m·row + (1 − m)·feature), m = --bank-momentum
        for b, video in enumerate(index.tolist()):
            torch.testing.assert_close(method.banks.bank(name)[video],
                                       unit(IIC_M * banks[name][video] + (1 - IIC_M) * feature[b]),
                                       rtol=1e-5, atol=1e-6, msg=name)
        untouched = [v for v in range(num_videos) if v not in index.tolist()]
        assert torch.equal(method.banks.bank(name)[untouched], banks[name][untouched])

    sum(out[name] for name in expected).backward()
    for call, what in zip(calls[:2], ("view 1", "view 2")):
        assert_every_row_has_gradient(call[1], slice(0, BATCH), f"IIC {what} features")
