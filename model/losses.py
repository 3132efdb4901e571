"""The DualVar losses (METHOD.md §5) as pure functions of tensors.

Conventions: B = samples on this process, W = processes, N = B·W global batch, n = series segments,
d = series dimension. Every loss is computed in fp32 with autocast disabled, whatever the input dtype.

The contrastive losses (`nt_xent`, `temporal_coherent_loss`) gather their keys from all processes with
a gradient-carrying all-gather, and each process returns the mean over its own 2B anchors. DistributedDataParallel
averages parameter gradients over the W processes, and the gather's backward sums the key gradients
of all processes into their owner, so the averaged gradients equal those of one process holding the
global batch and computing the mean over all 2N anchors; the mean of the W returned values is that
loss. All processes must pass the same B.
"""
import functools

import torch
import torch.nn.functional as F

from utils.distributed import all_gather_with_grad, get_rank, get_world_size, host_to_device


def _in_fp32(loss_fn):
    """Run `loss_fn` with floating tensor arguments cast to fp32 and autocast off (bf16 logits / τ lose digits)."""
    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        def to_fp32(value):
            return value.float() if torch.is_tensor(value) and value.is_floating_point() else value

        args = [to_fp32(value) for value in args]
        kwargs = {key: to_fp32(value) for key, value in kwargs.items()}
        device_type = next(value.device.type for value in [*args, *kwargs.values()] if torch.is_tensor(value))
        with torch.autocast(device_type=device_type, enabled=False):
            return loss_fn(*args, **kwargs)
    return wrapper


def _check_pair(a: torch.Tensor, b: torch.Tensor, ndim: int, names: str, layout: str) -> None:
    if a.ndim != ndim or a.shape != b.shape:
        raise ValueError(f"{names} must both have shape {layout}, got {tuple(a.shape)} and {tuple(b.shape)}")


def _nt_xent_logits(q_a: torch.Tensor, q_b: torch.Tensor, temperature: float):
    """Logits and targets of NT-Xent for this process's anchors against the global batch.

    q_a, q_b: (B, D) the two views of the same B samples (not renormalised here). The keys are both
    views gathered over all processes, K = [q_a of all processes; q_b of all processes] (2N, D). Anchor
    i of view A sits in column g = rank·B + i of K, its positive is column N + g (the same sample in
    view B), and vice versa; its own column is set to -inf so that it is neither positive nor negative,
    leaving 2N − 2 negatives.

    Returns logits (2B, 2N) = [q_a; q_b] Kᵀ / τ and targets (2B,) long, the positive's column.
    """
    _check_pair(q_a, q_b, 2, "the two views", "(B, D)")
    batch, dim = q_a.shape
    anchors = torch.cat([q_a, q_b])  # (2B, D)
    # One collective for both views, then regroup by view: (W·2B, D) -> (W, 2, B, D) -> (2, W, B, D).
    gathered = all_gather_with_grad(anchors).view(get_world_size(), 2, batch, dim)
    keys = gathered.transpose(0, 1).reshape(-1, dim)  # (2N, D)
    global_batch = keys.shape[0] // 2
    logits = anchors @ keys.T / temperature  # (2B, 2N)

    sample = get_rank() * batch + torch.arange(batch, device=q_a.device)  # (B,) global sample index
    own_column = torch.cat([sample, global_batch + sample])  # (2B,)
    targets = torch.cat([global_batch + sample, sample])  # (2B,)
    own = F.one_hot(own_column, 2 * global_batch).bool()  # (2B, 2N)
    return logits.masked_fill(own, float("-inf")), targets


@torch.no_grad()
def top1_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose largest logit is at the target column: logits (M, K), targets (M,) -> scalar."""
    return (logits.argmax(dim=1) == targets).float().mean()


@_in_fp32
def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.07, return_top1: bool = False):
    """NT-Xent (normalised temperature-scaled cross entropy) over the global batch.

    z_a, z_b: (B, D) L2-normalised embeddings of views A and B of the same B samples. With
    K = all 2N embeddings of the global batch, the loss of anchor x with positive x⁺ is
        ℓ(x) = −log( exp(x·x⁺/τ) / Σ_{k ∈ K, k ≠ x} exp(x·k/τ) ),
    i.e. one positive and 2N − 2 negatives. Returns the mean of ℓ over this process's 2B anchors
    (a scalar; see the module docstring for the multi-process equivalence). With `return_top1`,
    returns (loss, top-1 accuracy of identifying the positive over this process's anchors).
    """
    logits, targets = _nt_xent_logits(z_a, z_b, temperature)
    loss = F.cross_entropy(logits, targets)
    return (loss, top1_accuracy(logits, targets)) if return_top1 else loss


@_in_fp32
def temporal_coherent_loss(s_a: torch.Tensor, s_b: torch.Tensor, temperature: float = 0.07,
                           return_top1: bool = False):
    """Temporal coherent contrast (METHOD.md §5.2): NT-Xent with a clip similarity built from series.

    s_a, s_b: (B, n, d) series embeddings of views A and B, each of the n vectors L2-normalised. The
    clip similarity is the mean pairwise dot product of the two series,
        S(x, y) = (1/n²) Σ_j Σ_k s_j(x)·s_k(y) = m(x)·m(y),  m(x) = (1/n) Σ_j s_j(x)  (not renormalised),
    and the loss is NT-Xent over the global batch with logits S/τ (one positive, 2N − 2 negatives),
    averaged over this process's 2B anchors. `return_top1` as in `nt_xent`.
    """
    _check_pair(s_a, s_b, 3, "s_a and s_b", "(B, n, d)")
    return nt_xent(s_a.mean(dim=1), s_b.mean(dim=1), temperature, return_top1)  # means: (B, d)


def _rank_gram(reference: torch.Tensor, calibrated: torch.Tensor):
    """Gram matrix of X = [r_1..r_n, p_1..p_n] per sample and each anchor's positive and negatives."""
    _check_pair(reference, calibrated, 3, "reference and calibrated", "(B, n, d)")
    n_series = reference.shape[1]
    if n_series < 2:
        raise ValueError(f"the shuffle-rank loss needs n_series >= 2 segments (2n - 2 negatives), got {n_series}")
    stacked = torch.cat([reference, calibrated], dim=1)  # (B, 2n, d)
    gram = stacked @ stacked.transpose(1, 2)  # (B, 2n, 2n)
    anchor = torch.arange(2 * n_series, device=reference.device)
    positive = (anchor + n_series) % (2 * n_series)  # (2n,) same segment index in the other set
    excluded = F.one_hot(anchor, 2 * n_series).bool() | F.one_hot(positive, 2 * n_series).bool()
    return gram, positive, ~excluded  # negatives: (2n, 2n), 2n − 2 per row


@_in_fp32
def shuffle_rank_loss(reference: torch.Tensor, calibrated: torch.Tensor, theta: float = 0.05,
                      clamp: float | None = 5.0) -> torch.Tensor:
    """Shuffle-rank loss (METHOD.md §5.1 step 4), local to this process.

    reference: (B, n, d) series r of an unshuffled clip; calibrated: (B, n, d) series p of the shuffled
    clip put back in original order (`calibrate`); every vector L2-normalised. Per sample,
    X = [r_1..r_n, p_1..p_n] (2n, d) and G = X Xᵀ. Anchor a's positive is π(a), the same segment
    index in the other set; its negatives N(a) are the 2n − 2 rows other than a and π(a). The loss is
        mean over samples, anchors a and c ∈ N(a) of softplus( min((G[a,c] − G[a,π(a)]) / θ, clamp) ),
    with no clamp when `clamp` is None. Returns a scalar.
    """
    gram, positive, negative = _rank_gram(reference, calibrated)
    positive_sim = gram[:, torch.arange(len(positive), device=gram.device), positive]  # (B, 2n)
    margin = (gram - positive_sim.unsqueeze(2)) / theta  # (B, 2n, 2n)
    if clamp is not None:
        margin = margin.clamp(max=clamp)
    # Equal counts of negatives per anchor, so the flat mean is the mean over samples, anchors, negatives;
    # multiplying by the mask instead of indexing with it avoids a device sync.
    return (F.softplus(margin) * negative).sum() / (margin.shape[0] * negative.sum())


@_in_fp32
def shuffle_negative_loss(reference: torch.Tensor, unshuffled: torch.Tensor, shuffled: torch.Tensor,
                          theta: float = 0.05, clamp: float | None = 5.0) -> torch.Tensor:
    """Shuffle-rank with the shuffled clip as the negative (``--sr-variant negative``, a variant of this project).

    reference: (B, n, d) series s(A); unshuffled: s(A′); shuffled: s(σA′), the series of A′ with its segments
    deranged (no segment in place), not calibrated; every vector L2-normalised. For each slot j the un-shuffled
    re-augmentation is the positive of s_j(A) and the shuffled one its negative:
        mean over samples and slots j of softplus( min((s_j(A)·s_j(σA′) − s_j(A)·s_j(A′)) / θ, clamp) ).
    A network blind to the order of segments gives s(σA′) = s(A′), so its loss is softplus(0) = ln 2 whatever it
    outputs, with no gradient; only telling the orders apart brings it lower. Returns a scalar.
    """
    _check_pair(reference, unshuffled, 3, "reference and unshuffled", "(B, n, d)")
    _check_pair(reference, shuffled, 3, "reference and shuffled", "(B, n, d)")
    margin = ((reference * shuffled).sum(dim=2) - (reference * unshuffled).sum(dim=2)) / theta  # (B, n)
    if clamp is not None:
        margin = margin.clamp(max=clamp)
    return F.softplus(margin).mean()


@torch.no_grad()
def slot_accuracy(reference: torch.Tensor, unshuffled: torch.Tensor, shuffled: torch.Tensor) -> torch.Tensor:
    """Fraction of the (sample, slot) pairs of ``shuffle_negative_loss`` whose un-shuffled series is closer to the
    reference than the shuffled one (strictly: an order-blind network's ties score 0)."""
    return ((reference * unshuffled).sum(dim=2) > (reference * shuffled).sum(dim=2)).float().mean()


@torch.no_grad()
def rank_accuracy(reference: torch.Tensor, calibrated: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """Fraction of the B·2n anchors of `shuffle_rank_loss` whose positive π(a) is their most similar other row;
    with ``per_sample``, that fraction over each sample's 2n anchors, (B,)."""
    gram, positive, _ = _rank_gram(reference.float(), calibrated.float())
    itself = torch.eye(len(positive), dtype=torch.bool, device=gram.device)
    gram = gram.masked_fill(itself, float("-inf"))  # (B, 2n, 2n)
    hits = (gram.argmax(dim=2) == positive).float()  # (B, 2n)
    return hits.mean(dim=1) if per_sample else hits.mean()


def _draw_permutations(batch: int, n_series: int, generator, derangement: bool) -> torch.Tensor:
    """(batch, n_series) uniformly random permutations on the CPU, redrawn until fixed-point free if asked."""
    permutations = torch.rand(batch, n_series, generator=generator).argsort(dim=1)
    if derangement:
        identity = torch.arange(n_series)
        redraw = (permutations == identity).any(dim=1)
        while redraw.any():
            count = int(redraw.sum())
            permutations[redraw] = torch.rand(count, n_series, generator=generator).argsort(dim=1)
            redraw = (permutations == identity).any(dim=1)
    return permutations


def shuffle_segments(clips: torch.Tensor, n_series: int, generator: torch.Generator | None = None,
                     derangement: bool = False):
    """Cut each clip into n equal temporal segments and permute them (METHOD.md §5.1 steps 1–2).

    clips: (B, C, T, H, W) with T divisible by n. One permutation σ per sample is drawn uniformly on the
    CPU from `generator` (torch's global RNG when None); the identity is allowed unless `derangement`,
    which redraws until no segment stays in place. Slot j of the shuffled clip holds original segment
    σ(j). Returns (shuffled clips (B, C, T, H, W), permutations σ (B, n) long on the clips' device).
    """
    if clips.ndim != 5:
        raise ValueError(f"clips must have shape (B, C, T, H, W), got {tuple(clips.shape)}")
    batch, channels, frames, height, width = clips.shape
    if n_series < 1 or frames % n_series != 0:
        raise ValueError(f"cannot cut {frames} frames into n_series={n_series} equal segments: "
                         f"choose a frame count divisible by n_series")
    if derangement and n_series == 1:
        raise ValueError("a derangement of n_series=1 segment does not exist: use n_series >= 2 or no derangement")
    permutations = host_to_device(_draw_permutations(batch, n_series, generator, derangement), clips.device)
    segments = clips.reshape(batch, channels, n_series, frames // n_series, height, width)
    index = permutations.view(batch, 1, n_series, 1, 1, 1).expand_as(segments)
    shuffled = segments.gather(2, index)  # (B, C, n, T/n, H, W): slot j <- segment σ(j)
    return shuffled.view(batch, channels, frames, height, width), permutations


def calibrate(series: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """Put the series of a shuffled clip back in original segment order (METHOD.md §5.1 step 3).

    series: (B, n, d) output f of the shuffled clip, f[j] describing slot j; permutations: (B, n) the σ
    of `shuffle_segments`. Returns p (B, n, d) with p[σ(j)] = f[j]. No normalisation here: L2-normalising
    each vector commutes with the reordering, so do it before or after.
    """
    if series.ndim != 3 or permutations.shape != series.shape[:2]:
        raise ValueError(f"series (B, n, d) and permutations (B, n) disagree: "
                         f"{tuple(series.shape)} and {tuple(permutations.shape)}")
    inverse = permutations.argsort(dim=1)  # (B, n): inverse[k] is the slot that holds segment k
    return series.gather(1, inverse.unsqueeze(2).expand_as(series))
