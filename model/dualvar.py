"""DualVar on SimCLR and MoCo (METHOD.md §5).

Every clip gets a clip embedding z (128-d, L2-normalised) and a series embedding s (n vectors of d
dims, each L2-normalised) from one backbone and two MLP heads. The modes pick the loss terms:
`clip` (plain two-view baseline), `clip-sr` (+ shuffle-rank), `clip-tc` (+ temporal coherent
contrast), `clip-sr-tc` (the full method).

`forward(clips)` takes (B, V, 3, T, H, W) with views (A, B, A′) when the mode has SR, else (A, B),
and returns unweighted fp32 loss terms `loss_*` plus detached metrics `acc_*`; the engine applies
`.loss_weights`. Randomness (segment permutations, MoCo's BN shuffle) comes from torch's global RNG.
"""

import argparse
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from dataset.recipes import SamplingRecipe, View
from model.backbones import build_backbone
from model.losses import (calibrate, nt_xent, rank_accuracy, shuffle_negative_loss, shuffle_rank_loss, shuffle_segments,
                          slot_accuracy, temporal_coherent_loss)
from utils.distributed import all_gather_no_grad, broadcast, get_rank, get_world_size, host_to_device, is_dist

MODES = ("clip", "clip-sr", "clip-tc", "clip-sr-tc")
CROP_ONLY_P = 0.2  # view A skips colour jitter and blur with this probability (METHOD.md §3)
# The items DualVar trains on (METHOD.md §2-3): clips A and B of a video at independent centres, reversed together
# with probability 0.5, their frames decoded once; view A only cropped with probability CROP_ONLY_P, B and A′ (A's
# frames augmented again) always fully augmented. The modes without shuffle-rank take A and B only.
_A, _B, _A_PRIME = View(0, "pretrain", CROP_ONLY_P), View(1, "pretrain"), View(0, "pretrain")
DUALVAR_SAMPLING = SamplingRecipe("dualvar", "pair", views=(_A, _B, _A_PRIME), num_clips=2, stacked=True,
                                  resize_once=True, method="DualVar")
TWO_VIEW_SAMPLING = SamplingRecipe("two_view", "pair", views=(_A, _B), num_clips=2, stacked=True, resize_once=True,
                                   method="DualVar")
# published: METHOD.md §5.1, the paper's term, which an order-blind network can satisfy (docs/pretraining.md);
# negative: a variant of this project, the shuffled clip is the negative of each slot (losses.shuffle_negative_loss)
SR_VARIANTS = ("published", "negative")
# Known learning bugs, planted on purpose to check that the miniature notices a broken objective
# (paper_scripts/run/miniature_mutants.sh); never for training a network to use. Bug -> the term it needs.
PLANTED_BUGS = {
    "positive-other-video": "clip",  # the clip contrast's positive of A is view B of another video of the batch
    "sr-wrong-permutation": "sr",  # shuffle-rank calibrates with a permutation other than the one applied
    "tc-other-video": "tc",  # the temporal coherent contrast pairs A's series with B's of another video
}


def parse_clamp(text: str) -> float | None:
    """`--rank-clamp` value: a number, or "none" to disable the clamp."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rank-clamp takes a number or 'none', got {text!r}") from None


def add_dualvar_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("DualVar (SimCLR / MoCo)")
    group.add_argument("--mode", default="clip-sr-tc", choices=MODES,
                       help="loss terms: clip = plain two-view baseline; clip-sr adds shuffle-rank (paper's "
                            "'only-seg'); clip-tc adds temporal coherent contrast; clip-sr-tc = full DualVar")
    group.add_argument("--temperature", type=float, default=0.07, help="temperature of the clip contrast")
    group.add_argument("--tc-temperature", type=float, default=0.07,
                       help="temperature of the temporal coherent (series) contrast")
    group.add_argument("--theta", type=float, default=0.05, help="margin scale θ of the shuffle-rank loss")
    group.add_argument("--rank-clamp", type=parse_clamp, default=5.0,
                       help="clamp on (G[a,c] - G[a,pos]) / θ before the softplus of the rank loss; "
                            "'none' disables it")
    group.add_argument("--n-series", type=int, default=2,
                       help="temporal segments per clip = vectors in the series embedding (T must divide by it)")
    group.add_argument("--series-dim", type=int, default=64, help="dimension d of each series vector")
    group.add_argument("--embed-dim", type=int, default=128, help="dimension of the clip embedding")
    group.add_argument("--clip-loss-weight", type=float, default=1.0,
                       help="weight of the clip contrast; 0.125 reproduces the authors' 8-GPU balance (METHOD §5.5)")
    group.add_argument("--sr-loss-weight", type=float, default=1.0, help="weight of the shuffle-rank loss")
    group.add_argument("--tc-loss-weight", type=float, default=1.0, help="weight of the temporal coherent loss")
    group.add_argument("--derangement", action="store_true",
                       help="shuffle-rank never draws the identity permutation (published: identity allowed)")
    group.add_argument("--sr-variant", default="published", choices=SR_VARIANTS,
                       help="published: the paper's shuffle-rank (calibrated ranking; an order-blind network reaches "
                            "a loss below that of collapse); negative: a variant of this project, not the paper's: "
                            "derangements only, no calibration, the shuffled clip is each slot's negative, so that an "
                            "order-blind network stays at ln 2 (same --theta, --rank-clamp and --sr-loss-weight)")
    group.add_argument("--plant-bug", default="none", choices=["none", *PLANTED_BUGS],
                       help="plant a known learning bug, to check that an experiment can tell broken code from correct "
                            "code (the miniature's mutants); none for every real run")
    group.add_argument("--moco-k", type=int, default=16384,
                       help="MoCo queue length; must be a multiple of the global batch (batch size × processes)")
    group.add_argument("--moco-m", type=float, default=0.999, help="MoCo key-encoder momentum")
    group.add_argument("--moco-bn-splits", type=int, default=2,
                       help="in a single process, MoCo's BatchNorm sees the batch in this many sub-batches, the keys "
                            "shuffled across them (the one-GPU shuffle-BN of the MoCo paper); 1: no shuffle, the key "
                            "encoder's statistics then come from the queries' own videos")


def mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    """Linear C→C, ReLU, Linear C→out (no BatchNorm, as published)."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))


class DualEncoder(nn.Module):
    """Backbone + global average pool + clip head (+ series head when the mode uses series)."""

    def __init__(self, backbone: nn.Module, embed_dim: int, n_series: int, series_dim: int, with_series: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.clip_head = mlp(backbone.out_channels, embed_dim)
        self.series_head = mlp(backbone.out_channels, n_series * series_dim) if with_series else None
        self.n_series, self.series_dim = n_series, series_dim

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """clips (B, 3, T, H, W) -> z (B, D) normalised, series (B, n, d) NOT normalised (or None)."""
        pooled = self.backbone(clips).mean(dim=(2, 3, 4)).float()  # (B, C)
        # The heads run in fp32 whatever autocast the engine uses: the losses expect fp32 embeddings.
        with torch.autocast(pooled.device.type, enabled=False):
            z = F.normalize(self.clip_head(pooled), dim=1)  # (B, D)
            if self.series_head is None:
                return z, None
            series = self.series_head(pooled).view(-1, self.n_series, self.series_dim)  # (B, n, d)
        return z, series


def mean_series(s: torch.Tensor) -> torch.Tensor:
    """(N, n, d) normalised series -> (N, d) mean vector; S(x, y) = mean(x)·mean(y) (METHOD §5.2)."""
    return s.mean(dim=1)


def mode_terms(mode: str) -> set[str]:
    """The loss terms of a --mode: "clip", and "sr" / "tc" when it has them."""
    if mode not in MODES:
        raise ValueError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
    return set(mode.split("-"))


class DualVarBase(nn.Module):
    """Shared configuration, the query encoder and the SR term of both variants.

    ``backbone`` is a module of model/backbones.py (``build_backbone``); the keywords are the flags of
    ``add_dualvar_args`` under their Python names, with the published values as defaults.
    """

    def __init__(self, backbone: nn.Module, mode: str = "clip-sr-tc", *, temperature: float = 0.07,
                 tc_temperature: float = 0.07, theta: float = 0.05, rank_clamp: float | None = 5.0, n_series: int = 2,
                 series_dim: int = 64, embed_dim: int = 128, clip_loss_weight: float = 1.0,
                 sr_loss_weight: float = 1.0, tc_loss_weight: float = 1.0, derangement: bool = False,
                 sr_variant: str = "published", plant_bug: str = "none") -> None:
        super().__init__()
        terms = mode_terms(mode)
        self.mode = mode
        self.use_sr = "sr" in terms
        self.use_tc = "tc" in terms
        if self.use_sr and n_series < 2:
            raise ValueError(f"--n-series {n_series}: shuffle-rank needs at least 2 segments")
        if n_series < 1 or series_dim < 1 or embed_dim < 1:
            raise ValueError("--n-series, --series-dim and --embed-dim must be positive")
        for flag, value in (("--temperature", temperature), ("--tc-temperature", tc_temperature), ("--theta", theta)):
            if value <= 0:
                raise ValueError(f"{flag} must be positive, got {value}")
        self.plant_bug = plant_bug
        if self.plant_bug != "none" and PLANTED_BUGS[self.plant_bug] not in terms:
            raise ValueError(f"--plant-bug {self.plant_bug} breaks the '{PLANTED_BUGS[self.plant_bug]}' term, which "
                             f"--mode {mode} does not have")
        self.temperature = temperature
        self.tc_temperature = tc_temperature
        self.theta = theta
        self.rank_clamp = rank_clamp
        self.n_series = n_series
        self.sr_variant = sr_variant
        if self.sr_variant not in SR_VARIANTS:
            raise ValueError(f"--sr-variant {self.sr_variant!r}: choose one of {', '.join(SR_VARIANTS)}")
        if self.sr_variant != "published" and self.plant_bug == "sr-wrong-permutation":
            raise ValueError("--plant-bug sr-wrong-permutation breaks the calibration of --sr-variant published; "
                             f"--sr-variant {self.sr_variant} has none")
        self.derangement = derangement or self.sr_variant == "negative"
        self.num_views = 3 if self.use_sr else 2
        self.encoder = DualEncoder(backbone, embed_dim, n_series, series_dim, with_series=self.use_sr or self.use_tc)
        self.loss_weights = {"loss_clip": clip_loss_weight}
        if self.use_sr:
            self.loss_weights["loss_sr"] = sr_loss_weight
        if self.use_tc:
            self.loss_weights["loss_tc"] = tc_loss_weight

    # the flags of add_dualvar_args that the constructor takes, under their Python names
    ARGS = ("mode", "temperature", "tc_temperature", "theta", "rank_clamp", "n_series", "series_dim", "embed_dim",
            "clip_loss_weight", "sr_loss_weight", "tc_loss_weight", "derangement", "sr_variant", "plant_bug")

    @staticmethod
    def sampling_for(args: argparse.Namespace) -> SamplingRecipe:
        """The dataset items the flags' mode trains on: A, B and A′ with shuffle-rank, else A and B."""
        return DUALVAR_SAMPLING if "sr" in mode_terms(args.mode) else TWO_VIEW_SAMPLING

    @classmethod
    def from_args(cls, args: argparse.Namespace, num_videos: int | None = None) -> "DualVarBase":
        """The method of train_ssl.py's flags (``num_videos`` is for methods with memory banks; DualVar has none)."""
        backbone, _ = build_backbone(args.net, args.base_width)
        return cls(backbone, **{name: getattr(args, name) for name in cls.ARGS if hasattr(args, name)})

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    @staticmethod
    def card_fields(config: dict, processes: int) -> dict:
        """How a run's card (engine/card.py) names the mode and the negatives of the configuration ``config``."""
        return {"mode": config.get("mode"), "negatives": "unknown", "clip": {}}

    def check_input(self, clips: torch.Tensor) -> None:
        if clips.dim() != 6 or clips.shape[1] != self.num_views or clips.shape[2] != 3:
            views = "(A, B, A′): use the 'dualvar' sampler" if self.use_sr else "(A, B): use the 'two_view' sampler"
            raise ValueError(f"--mode {self.mode} expects clips of shape (B, {self.num_views}, 3, T, H, W) with "
                             f"views {views}; got {tuple(clips.shape)}")
        if self.use_sr and clips.shape[3] % self.n_series:
            raise ValueError(f"--num-frames {clips.shape[3]} is not divisible by --n-series {self.n_series}: "
                             "shuffle-rank splits each clip into equal segments")

    def check_config(self, batch_size: int, num_frames: int) -> None:
        """Refuse, from the flags alone, what the first forward would (for --dry-run and before a run writes)."""
        self.check_input(torch.empty(batch_size, self.num_views, 3, num_frames, 1, 1, device="meta"))

    def shuffle(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shuffle the n temporal segments of each clip (B, 3, T, H, W) -> (shuffled, permutations (B, n))."""
        return shuffle_segments(clips, self.n_series, derangement=self.derangement)

    def other_video(self, x: torch.Tensor, bug: str) -> torch.Tensor:
        """``x`` (B, ...) as it is, or, when ``bug`` is the planted one, each row replaced by the previous sample's."""
        return x.roll(1, dims=0) if self.plant_bug == bug else x

    def shuffle_rank(self, s_a: torch.Tensor, s_a_prime: torch.Tensor, shuffled_series: torch.Tensor,
                     permutations: torch.Tensor) -> dict[str, torch.Tensor]:
        """The shuffle-rank term of ``--sr-variant`` from s(A), s(A′) (normalised) and the raw series of shuffled A′.

        published: L_SR = 0.5·Rank(s(A), p) + 0.5·Rank(s(A′), p), p = the calibrated, normalised series of
        shuffled A′. negative: ``losses.shuffle_negative_loss``, the permutations being derangements.
        """
        if self.sr_variant == "negative":
            shuffled = F.normalize(shuffled_series, dim=-1)  # (B, n, d), slot j holds segment σ(j): not calibrated
            accuracy = slot_accuracy(s_a.detach(), s_a_prime.detach(), shuffled.detach())
            # every permutation is a derangement: the accuracy is that of shuffled clips
            return {"loss_sr": shuffle_negative_loss(s_a, s_a_prime, shuffled, self.theta, self.rank_clamp),
                    "acc_rank": accuracy, "acc_rank_shuffled": accuracy}
        # the planted bug: σ'(j) = σ(j − 1) differs from σ at every slot, so every target is another segment
        targets = permutations.roll(1, dims=1) if self.plant_bug == "sr-wrong-permutation" else permutations
        p = F.normalize(calibrate(shuffled_series, targets), dim=-1)  # (B, n, d)
        loss = 0.5 * (shuffle_rank_loss(s_a, p, self.theta, self.rank_clamp)
                      + shuffle_rank_loss(s_a_prime, p, self.theta, self.rank_clamp))
        accuracy = 0.5 * (rank_accuracy(s_a.detach(), p.detach(), per_sample=True)
                          + rank_accuracy(s_a_prime.detach(), p.detach(), per_sample=True))  # (B,)
        # Split by permutation: an order-blind network scores 1 on identities and 0 on swaps, which
        # averages to a plausible-looking 0.5. NaN when the batch holds no sample of that kind.
        identity = (permutations == torch.arange(self.n_series, device=permutations.device)).all(dim=1).float()
        return {"loss_sr": loss, "acc_rank": accuracy.mean(),
                "acc_rank_identity": (accuracy * identity).sum() / identity.sum(),
                "acc_rank_shuffled": (accuracy * (1 - identity)).sum() / (1 - identity).sum()}


class SimCLRDualVar(DualVarBase):
    """SimCLR with DualVar terms: NT-Xent over the global batch for the clip and the series embeddings."""

    @property
    def clips_with_gradient(self) -> int:
        """Backbone passes per video that keep activations for backward (engine/memory.py): A, B (and A′), then
        the shuffled A′."""
        return 4 if self.use_sr else 2

    @property
    def clips_in_largest_pass(self) -> int:
        """Clips per video in the largest backbone call with gradients: A, B (and A′) together."""
        return 3 if self.use_sr else 2

    @staticmethod
    def card_fields(config: dict, processes: int) -> dict:
        negatives = (f"the global batch, gathered across {processes} processes" if processes > 1
                     else "the batch of the single process")
        return {"mode": config.get("mode"), "negatives": negatives, "clip": {}}

    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(clips)
        batch = clips.shape[0]
        # One pass over all views so that BatchNorm sees A, B (and A′) together.
        z, series = self.encoder(clips.transpose(0, 1).flatten(0, 1))  # (V·B, D), (V·B, n, d) view-major
        z_a, z_b = z[:batch], self.other_video(z[batch:2 * batch], "positive-other-video")
        out = dict(zip(("loss_clip", "acc_clip"), nt_xent(z_a, z_b, self.temperature, return_top1=True)))
        if series is None:
            return out
        s = F.normalize(series, dim=-1)  # (V·B, n, d)
        if self.use_tc:
            s_b = self.other_video(s[batch:2 * batch], "tc-other-video")
            out.update(zip(("loss_tc", "acc_tc"), temporal_coherent_loss(s[:batch], s_b, self.tc_temperature,
                                                                         return_top1=True)))
        if self.use_sr:
            shuffled, permutations = self.shuffle(clips[:, 2])
            _, shuffled_series = self.encoder(shuffled)  # (B, n, d)
            out.update(self.shuffle_rank(s[:batch], s[2 * batch:], shuffled_series, permutations))
        return out


class MoCoDualVar(DualVarBase):
    """MoCo with DualVar terms (METHOD §5.4): view A is the query, view B the key.

    The key encoder follows the query encoder by momentum (updated before the keys are computed) and
    is never touched by the optimizer. Queues of K clip keys (K, D) and, with TC, series keys
    (K, n, d) share one pointer; all three are buffers, so they live in the state_dict.
    """

    # --sync-bn converts the query encoder only: synchronised key statistics would undo the shuffle
    sync_bn_submodules = ("encoder",)
    ARGS = DualVarBase.ARGS + ("moco_k", "moco_m", "moco_bn_splits")

    @property
    def clips_with_gradient(self) -> int:
        """Backbone passes per video that keep activations for backward (engine/memory.py): the query (A), and A′
        with its shuffled copy; the keys (B) run without gradient."""
        return 3 if self.use_sr else 1

    @property
    def clips_in_largest_pass(self) -> int:
        """Clips per video in the largest backbone call with gradients: A′ with its shuffled copy, or the query."""
        return 2 if self.use_sr else 1

    @staticmethod
    def card_fields(config: dict, processes: int) -> dict:
        return {"mode": config.get("mode"), "negatives": f"a queue of {config.get('moco_k')} keys, filled from all "
                                                          f"{processes} process(es)", "clip": {}}

    def __init__(self, backbone: nn.Module, mode: str = "clip-sr-tc", *, moco_k: int = 16384, moco_m: float = 0.999,
                 moco_bn_splits: int = 2, **dualvar) -> None:
        """``moco_k`` keys in the queue, key-encoder momentum ``moco_m``, ``moco_bn_splits`` sub-batches for the
        one-process shuffle-BN; the other keywords are DualVarBase's."""
        super().__init__(backbone, mode, **dualvar)
        if moco_k < 1:
            raise ValueError(f"--moco-k must be positive, got {moco_k}")
        if not 0.0 <= moco_m <= 1.0:
            raise ValueError(f"--moco-m must lie in [0, 1], got {moco_m}")
        if moco_bn_splits < 1:
            raise ValueError(f"--moco-bn-splits must be at least 1, got {moco_bn_splits}")
        self.queue_size = moco_k
        self.momentum = moco_m
        self.bn_splits = moco_bn_splits
        self.key_encoder = copy.deepcopy(self.encoder)
        for parameter in self.key_encoder.parameters():
            parameter.requires_grad_(False)
        embed_dim = self.encoder.clip_head[-1].out_features
        self.register_buffer("clip_queue", F.normalize(torch.randn(moco_k, embed_dim), dim=1))
        if self.use_tc:
            self.register_buffer("series_queue", F.normalize(
                torch.randn(moco_k, self.n_series, self.encoder.series_dim), dim=-1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key ← m·key + (1 − m)·query, parameters only (the key encoder keeps its own BN statistics)."""
        key_params = list(self.key_encoder.parameters())
        query_params = list(self.encoder.parameters())
        torch._foreach_mul_(key_params, self.momentum)
        torch._foreach_add_(key_params, query_params, alpha=1.0 - self.momentum)

    @torch.no_grad()
    def encode_keys(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Key embeddings of clips (B, 3, T, H, W), with the batch shuffled across processes for BatchNorm.

        Without the shuffle each process's BN statistics would come from the same videos as its
        queries, which leaks the positive pair through the batch statistics (MoCo's shuffle-BN). In one
        process the batch is shuffled and split into ``bn_splits`` sub-batches instead, as the queries are
        (``encode_queries``), so that a key's statistics come from other videos than its query's.
        """
        if not is_dist():
            if self.bn_splits == 1:
                return self.key_encoder(clips)
            permutation = host_to_device(torch.randperm(clips.shape[0]), clips.device)
            z, series = self._in_sub_batches(self.key_encoder, clips[permutation])
            inverse = torch.argsort(permutation)
            return z[inverse], (None if series is None else series[inverse])
        batch, world_size, rank = clips.shape[0], get_world_size(), get_rank()
        all_clips = all_gather_no_grad(clips)  # (N, 3, T, H, W)
        permutation = host_to_device(torch.randperm(all_clips.shape[0]), clips.device)
        permutation = broadcast(permutation, 0)  # every process uses rank 0's permutation
        mine = permutation.view(world_size, batch)[rank]  # (B,) rows of the global batch for this process
        z, series = self.key_encoder(all_clips[mine])
        inverse = torch.argsort(permutation).view(world_size, batch)[rank]
        z = all_gather_no_grad(z)[inverse]  # (B, D), back in this process's order
        if series is not None:
            series = all_gather_no_grad(series)[inverse]
        return z, series

    def _in_sub_batches(self, encoder: nn.Module, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``encoder`` over ``bn_splits`` consecutive sub-batches of clips (B, 3, T, H, W), each with its own
        BatchNorm statistics, concatenated back in order."""
        parts = [encoder(part) for part in clips.tensor_split(min(self.bn_splits, clips.shape[0]))]
        z = torch.cat([part[0] for part in parts])
        series = None if parts[0][1] is None else torch.cat([part[1] for part in parts])
        return z, series

    def encode_queries(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Query embeddings; in one process in ``bn_splits`` sub-batches, the virtual GPUs of ``encode_keys``."""
        if is_dist() or self.bn_splits == 1:
            return self.encoder(clips)
        return self._in_sub_batches(self.encoder, clips)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, series_keys: torch.Tensor | None) -> None:
        """Write the global batch of keys at the pointer, overwriting the oldest ones."""
        keys = all_gather_no_grad(keys)  # (N, D)
        # rows ptr .. ptr + N - 1 (the queue is a multiple of N long), computed on the device: reading the
        # pointer on the host would wait for the GPU
        rows = self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)  # (N,)
        self.clip_queue.index_copy_(0, rows, keys)
        if self.use_tc:
            self.series_queue.index_copy_(0, rows, all_gather_no_grad(series_keys))
        self.queue_ptr.add_(keys.shape[0]).remainder_(self.queue_size)

    def check_config(self, batch_size: int, num_frames: int) -> None:
        super().check_config(batch_size, num_frames)
        self.check_queue(batch_size)

    def check_queue(self, batch: int) -> None:
        global_batch = batch * get_world_size()
        if self.queue_size % global_batch:
            raise ValueError(f"--moco-k {self.queue_size} is not a multiple of the global batch {global_batch} "
                             f"(batch size {batch} × {get_world_size()} processes); choose --moco-k as a multiple "
                             "of it (the training loader must drop incomplete last batches)")

    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(clips)
        batch = clips.shape[0]
        self.check_queue(batch)
        z_q, series_q = self.encode_queries(clips[:, 0])  # (B, D), (B, n, d)
        self.momentum_update()
        z_k, series_k = self.encode_keys(clips[:, 1])
        z_k = self.other_video(z_k, "positive-other-video")
        if series_k is not None:
            series_k = self.other_video(series_k, "tc-other-video")

        targets = torch.zeros(batch, dtype=torch.long, device=clips.device)
        # Logits over thousands of queued keys lose digits in half precision: fp32 whatever the engine's autocast.
        with torch.autocast(clips.device.type, enabled=False):
            clip_logits = torch.cat([
                (z_q * z_k).sum(dim=1, keepdim=True),  # (B, 1) positive
                z_q @ self.clip_queue.clone().T,  # (B, K) negatives; a copy, as the queue changes before backward
            ], dim=1) / self.temperature
            out = {"loss_clip": F.cross_entropy(clip_logits, targets),
                   "acc_clip": (clip_logits.detach().argmax(dim=1) == 0).float().mean()}

            if self.use_tc:
                query_mean = mean_series(F.normalize(series_q, dim=-1))  # (B, d)
                key_mean = mean_series(F.normalize(series_k, dim=-1))  # (B, d)
                tc_logits = torch.cat([
                    (query_mean * key_mean).sum(dim=1, keepdim=True),  # (B, 1)
                    query_mean @ mean_series(self.series_queue).T,  # (B, K)
                ], dim=1) / self.tc_temperature
                out["loss_tc"] = F.cross_entropy(tc_logits, targets)
                out["acc_tc"] = (tc_logits.detach().argmax(dim=1) == 0).float().mean()

        if self.use_sr:
            a_prime = clips[:, 2]
            shuffled, permutations = self.shuffle(a_prime)
            _, series_pair = self.encoder(torch.cat([a_prime, shuffled]))  # (2B, n, d): A′ then shuffled A′
            out.update(self.shuffle_rank(F.normalize(series_q, dim=-1), F.normalize(series_pair[:batch], dim=-1),
                                         series_pair[batch:], permutations))

        self.enqueue(z_k, F.normalize(series_k, dim=-1) if self.use_tc else None)
        return out
