import math

import pytest
import torch
import torch.nn.functional as F

from model.losses import (calibrate, nt_xent, rank_accuracy, shuffle_rank_loss, shuffle_segments,
                          temporal_coherent_loss, top1_accuracy)


def _unit(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)


def _loop_nt_xent(similarity, temperature):
    """Reference NT-Xent over 2N items where item i and i ± N are positives; returns (loss, top-1)."""
    count = similarity.shape[0]
    half = count // 2
    losses, hits = [], 0
    for anchor in range(count):
        positive = (anchor + half) % count
        others = [k for k in range(count) if k != anchor]
        denominator = sum(torch.exp(similarity[anchor, k] / temperature) for k in others)
        losses.append(-torch.log(torch.exp(similarity[anchor, positive] / temperature) / denominator))
        hits += int(max(others, key=lambda k: similarity[anchor, k].item()) == positive)
    return torch.stack(losses).mean(), hits / count


def test_nt_xent_matches_loop_reference_and_its_gradients():
    z_a = _unit(4, 8, seed=1).requires_grad_()
    z_b = _unit(4, 8, seed=2).requires_grad_()
    loss, top1 = nt_xent(z_a, z_b, 0.2, return_top1=True)
    grads = torch.autograd.grad(loss, (z_a, z_b))

    items = torch.cat([z_a, z_b]).double()
    expected, expected_top1 = _loop_nt_xent(items @ items.T, 0.2)
    expected_grads = torch.autograd.grad(expected, (z_a, z_b))

    assert loss.dtype == torch.float32
    assert torch.allclose(loss.double(), expected, atol=1e-5)
    assert top1.item() == pytest.approx(expected_top1)
    for grad, expected_grad in zip(grads, expected_grads):
        assert torch.isfinite(grad).all()
        assert torch.allclose(grad.double(), expected_grad, atol=1e-5)


def test_nt_xent_top1_is_perfect_when_views_match():
    z = _unit(6, 16, seed=3)
    _, top1 = nt_xent(z, z.clone(), 0.1, return_top1=True)
    assert top1.item() == 1.0
    assert top1_accuracy(torch.tensor([[0.0, 2.0], [1.0, 0.5]]), torch.tensor([1, 1])).item() == 0.5


@pytest.mark.parametrize("n_series", [2, 3])
def test_temporal_coherent_loss_uses_mean_pairwise_similarity(n_series):
    batch = 3
    s_a = _unit(batch, n_series, 5, seed=4)
    s_b = _unit(batch, n_series, 5, seed=5)
    series = torch.cat([s_a, s_b])  # (2B, n, d)
    similarity = torch.zeros(2 * batch, 2 * batch, dtype=torch.float64)
    for x in range(2 * batch):
        for y in range(2 * batch):
            similarity[x, y] = sum(series[x, j] @ series[y, k]
                                   for j in range(n_series) for k in range(n_series)) / n_series ** 2
    expected, expected_top1 = _loop_nt_xent(similarity, 0.07)

    loss, top1 = temporal_coherent_loss(s_a, s_b, 0.07, return_top1=True)
    assert torch.allclose(loss.double(), expected, atol=1e-5)
    assert top1.item() == pytest.approx(expected_top1)


def _loop_rank_loss(reference, calibrated, theta, clamp):
    terms = []
    for r, p in zip(reference, calibrated):
        rows = list(r) + list(p)
        n_series = len(r)
        for anchor in range(2 * n_series):
            positive = anchor + n_series if anchor < n_series else anchor - n_series
            for negative in range(2 * n_series):
                if negative in (anchor, positive):
                    continue
                margin = (rows[anchor] @ rows[negative] - rows[anchor] @ rows[positive]) / theta
                if clamp is not None:
                    margin = torch.clamp(margin, max=clamp)
                terms.append(torch.log1p(torch.exp(margin)))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("n_series", [2, 3])
@pytest.mark.parametrize("clamp", [5.0, None])
def test_shuffle_rank_loss_matches_loop_reference(n_series, clamp):
    reference = _unit(3, n_series, 4, seed=6).requires_grad_()
    calibrated = _unit(3, n_series, 4, seed=7).requires_grad_()
    loss = shuffle_rank_loss(reference, calibrated, theta=0.05, clamp=clamp)
    expected = _loop_rank_loss(reference, calibrated, 0.05, clamp)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    grads = torch.autograd.grad(loss, (reference, calibrated))
    expected_grads = torch.autograd.grad(expected, (reference, calibrated))
    for grad, expected_grad in zip(grads, expected_grads):
        assert torch.allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_shuffle_rank_loss_clamp_changes_the_value_only_past_the_clamp():
    reference = _unit(3, 2, 4, seed=6)
    calibrated = _unit(3, 2, 4, seed=7)
    clamped = shuffle_rank_loss(reference, calibrated, clamp=5.0)
    unclamped = shuffle_rank_loss(reference, calibrated, clamp=None)
    high = shuffle_rank_loss(reference, calibrated, clamp=1e9)
    assert clamped < unclamped
    assert high.item() == pytest.approx(unclamped.item())


def test_shuffle_rank_loss_closed_form_cases():
    e1, e2 = torch.eye(2)
    aligned = torch.stack([e1, e2]).unsqueeze(0)  # (1, 2, 2)
    swapped = torch.stack([e2, e1]).unsqueeze(0)
    # Aligned: every positive has similarity 1 and every negative 0, margin −1/θ = −20.
    assert shuffle_rank_loss(aligned, aligned).item() == pytest.approx(math.log1p(math.exp(-20.0)), rel=1e-5)
    # Swapped: positive 0; one negative 0 (margin 0), one negative 1 (margin 20, clamped to 5).
    expected_clamped = (math.log(2.0) + math.log1p(math.exp(5.0))) / 2
    expected_free = (math.log(2.0) + math.log1p(math.exp(20.0))) / 2
    assert shuffle_rank_loss(aligned, swapped).item() == pytest.approx(expected_clamped, rel=1e-5)
    assert shuffle_rank_loss(aligned, swapped, clamp=None).item() == pytest.approx(expected_free, rel=1e-5)
    assert rank_accuracy(aligned, aligned).item() == 1.0
    assert rank_accuracy(aligned, swapped).item() == 0.0


@pytest.mark.parametrize("permutation", [[0, 1, 2], [2, 0, 1], [1, 0, 2]])
def test_calibrated_series_of_a_faithful_encoder_ranks_perfectly(permutation):
    # A shuffled clip's slot j shows segment σ(j); an encoder that describes content exactly outputs
    # f[j] = r[σ(j)], and calibration must restore r whatever σ is, identity included.
    reference = _unit(2, 3, 6, seed=8)
    permutations = torch.tensor([permutation, [2, 1, 0]])
    slot_series = torch.stack([reference[b, permutations[b]] for b in range(2)])
    calibrated = calibrate(slot_series, permutations)
    assert torch.equal(calibrated, reference)
    assert rank_accuracy(reference, calibrated).item() == 1.0
    assert shuffle_rank_loss(reference, calibrated) < shuffle_rank_loss(reference, slot_series)


def test_rank_accuracy_matches_loop_reference():
    reference = _unit(4, 3, 5, seed=9)
    calibrated = _unit(4, 3, 5, seed=10)
    hits = total = 0
    for r, p in zip(reference, calibrated):
        rows = torch.cat([r, p])
        for anchor in range(6):
            others = [k for k in range(6) if k != anchor]
            best = max(others, key=lambda k: (rows[anchor] @ rows[k]).item())
            hits += int(best == (anchor + 3) % 6)
            total += 1
    assert rank_accuracy(reference, calibrated).item() == pytest.approx(hits / total)


def _frame_numbered_clips(batch, frames):
    """(B, 3, T, 2, 2) clips whose every pixel holds 100·sample + frame index."""
    values = 100 * torch.arange(batch).view(batch, 1, 1, 1, 1) + torch.arange(frames).view(1, 1, frames, 1, 1)
    return values.expand(batch, 3, frames, 2, 2).float().contiguous()


@pytest.mark.parametrize("n_series", [2, 4])
def test_shuffle_segments_puts_segment_sigma_j_in_slot_j(n_series):
    batch, frames = 5, 8
    clips = _frame_numbered_clips(batch, frames)
    shuffled, permutations = shuffle_segments(clips, n_series, torch.Generator().manual_seed(0))
    assert shuffled.shape == clips.shape and permutations.shape == (batch, n_series)
    length = frames // n_series
    for b in range(batch):
        assert sorted(permutations[b].tolist()) == list(range(n_series))
        for slot in range(n_series):
            source = permutations[b, slot].item()
            assert torch.equal(shuffled[b, :, slot * length:(slot + 1) * length],
                               clips[b, :, source * length:(source + 1) * length])


def test_calibrate_inverts_shuffle_on_segment_features():
    batch, frames, n_series = 6, 12, 3
    clips = _frame_numbered_clips(batch, frames)
    shuffled, permutations = shuffle_segments(clips, n_series, torch.Generator().manual_seed(1))
    length = frames // n_series

    def segment_means(video):  # (B, 3, T, H, W) -> (B, n, 1)
        return video.view(batch, 3, n_series, length, 2, 2).mean(dim=(1, 3, 4, 5)).unsqueeze(2)

    assert not torch.equal(segment_means(shuffled), segment_means(clips))  # seed 1 shuffles something
    assert torch.equal(calibrate(segment_means(shuffled), permutations), segment_means(clips))


@pytest.mark.parametrize("n_series", [2, 3, 4])
def test_derangement_never_leaves_a_segment_in_place(n_series):
    clips = torch.zeros(500, 1, 4 * n_series, 1, 1)
    _, deranged = shuffle_segments(clips, n_series, torch.Generator().manual_seed(2), derangement=True)
    assert not (deranged == torch.arange(n_series)).any()
    _, free = shuffle_segments(clips, n_series, torch.Generator().manual_seed(2))
    assert (free == torch.arange(n_series)).all(dim=1).any()  # the identity is allowed by default


def test_shuffle_segments_reproducible_from_generator():
    clips = torch.randn(16, 3, 8, 4, 4)
    first = shuffle_segments(clips, 4, torch.Generator().manual_seed(3))
    again = shuffle_segments(clips, 4, torch.Generator().manual_seed(3))
    other = shuffle_segments(clips, 4, torch.Generator().manual_seed(4))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    torch.manual_seed(5)
    global_first = shuffle_segments(clips, 4)[1]
    torch.manual_seed(5)
    assert torch.equal(global_first, shuffle_segments(clips, 4)[1])


def test_losses_compute_in_fp32_under_bf16_autocast():
    z_a = _unit(4, 32, seed=11).to(torch.bfloat16)
    z_b = _unit(4, 32, seed=12).to(torch.bfloat16)
    s = _unit(4, 2, 16, seed=13).to(torch.bfloat16)
    expected = (nt_xent(z_a.float(), z_b.float(), 0.07), shuffle_rank_loss(s.float(), s.flip(1).float()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = (nt_xent(z_a, z_b, 0.07), shuffle_rank_loss(s, s.flip(1)))
    for value, reference in zip(got, expected):
        assert value.dtype == torch.float32
        assert torch.allclose(value, reference, rtol=1e-6)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="divisible by n_series"):
        shuffle_segments(torch.zeros(2, 3, 10, 4, 4), 3)
    with pytest.raises(ValueError, match="derangement"):
        shuffle_segments(torch.zeros(2, 3, 8, 4, 4), 1, derangement=True)
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        shuffle_segments(torch.zeros(3, 8, 4, 4), 2)
    with pytest.raises(ValueError, match=r"\(B, n, d\)"):
        shuffle_rank_loss(torch.zeros(2, 2, 4), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="n_series >= 2"):
        shuffle_rank_loss(torch.zeros(2, 1, 4), torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        nt_xent(torch.zeros(4, 8), torch.zeros(3, 8), 0.1)
    with pytest.raises(ValueError, match="disagree"):
        calibrate(torch.zeros(2, 3, 4), torch.zeros(2, 2, dtype=torch.long))
