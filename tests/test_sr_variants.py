"""Shuffle-rank's order-blind minimum (the published loss) and the negative variant that removes it
(train_ssl.py --sr-variant negative, a variant of this project, not the paper's method)."""

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from model import add_method_args, build_method
from model.losses import shuffle_negative_loss, shuffle_segments

THETA, CLAMP, N = 0.05, 5.0, 2
C_STAR = 1 - THETA * math.log(2)  # (1 − c) / θ = ln 2: where the published loss is stationary for n = 2


class OrderBlind(torch.nn.Module):
    """A stand-in network whose series depend only on which frames a clip holds, not on their order."""

    def __init__(self, n_series=N, dim=4):
        super().__init__()
        self.n, self.dim = n_series, dim
        self.linear = torch.nn.Linear(3 * 4 * 4, n_series * dim)

    def forward(self, clips):  # (B, 3, T, 4, 4) -> (B, n, d), each vector normalised
        return F.normalize(self.linear(clips.mean(dim=2).flatten(1)).view(-1, self.n, self.dim), dim=-1)


@pytest.mark.parametrize("seed", range(4))
def test_negative_variant_gives_an_order_blind_network_ln2_and_no_gradient(seed):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    network = OrderBlind()
    a, a_prime = torch.rand(2, 5, 3, 8, 4, 4, generator=generator)
    shuffled, permutations = shuffle_segments(a_prime, N, generator=generator, derangement=True)
    loss = shuffle_negative_loss(network(a), network(a_prime), network(shuffled), THETA, CLAMP)
    assert abs(loss.item() - math.log(2)) < 1e-6
    # the gradient with respect to the shared features: zero, whatever they are
    reference = network(a).detach().requires_grad_()
    shared = network(a_prime).detach().requires_grad_()
    loss = shuffle_negative_loss(reference, shared, shared, THETA, CLAMP)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert torch.count_nonzero(reference.grad) == 0 and torch.count_nonzero(shared.grad) == 0
    # an order-aware series goes below ln 2
    aware = F.normalize(torch.randn(5, N, 4, generator=generator), dim=-1)
    assert shuffle_negative_loss(aware, aware, -aware, THETA, CLAMP) < 0.01


def method(variant):
    parser = argparse.ArgumentParser()
    add_method_args(parser)
    return build_method(parser.parse_args(["--net", "r3d", "--base-width", "4", "--mode", "clip-sr",
                                           "--sr-variant", variant]))


def published_expected_loss(c: float) -> float:
    """The published loss of an order-blind network whose two slot vectors have dot product c, averaged over
    the identity and the swap (each drawn with probability 1/2), through the method's own shuffle_rank."""
    dualvar = method("published")
    u1 = torch.tensor([1.0, 0.0])
    u2 = torch.tensor([c, math.sqrt(1 - c * c)])
    series = torch.stack([u1, u2])[None]  # (1, 2, 2): the same for A, A′ and the shuffled A′
    losses = [dualvar.shuffle_rank(series, series, series, torch.tensor([order]))["loss_sr"].item()
              for order in ([0, 1], [1, 0])]
    return sum(losses) / 2


def test_published_loss_of_an_order_blind_network_sits_below_collapse_at_c_star():
    value = published_expected_loss(C_STAR)
    formula = 0.5 * F.softplus(torch.tensor((C_STAR - 1) / THETA)) + 0.25 * (
        math.log(2) + F.softplus(torch.tensor(min((1 - C_STAR) / THETA, CLAMP))))
    assert value == pytest.approx(float(formula), abs=1e-6)
    assert value == pytest.approx(0.651, abs=1e-3) and value < math.log(2)
    # a stationary point: the loss rises on both sides of c*
    assert published_expected_loss(C_STAR - 0.01) > value and published_expected_loss(C_STAR + 0.01) > value
    # and the rank accuracy there: 1 on the identity, 0 on the swap
    dualvar = method("published")
    u = torch.stack([torch.tensor([1.0, 0.0]), torch.tensor([C_STAR, math.sqrt(1 - C_STAR ** 2)])])[None]
    identity = dualvar.shuffle_rank(u, u, u, torch.tensor([[0, 1]]))
    swap = dualvar.shuffle_rank(u, u, u, torch.tensor([[1, 0]]))
    assert identity["acc_rank_identity"] == 1.0 and swap["acc_rank_shuffled"] == 0.0


def test_negative_variant_draws_only_derangements_and_refuses_a_calibration_bug():
    dualvar = method("negative")
    clips = torch.rand(64, 3, 8, 2, 2)
    shuffled, permutations = dualvar.shuffle(clips)
    assert (permutations != torch.arange(N)).all()
    with pytest.raises(ValueError, match="has none"):
        parser = argparse.ArgumentParser()
        add_method_args(parser)
        build_method(parser.parse_args(["--net", "r3d", "--base-width", "4", "--sr-variant", "negative",
                                        "--plant-bug", "sr-wrong-permutation"]))
