"""Bi_NCMH's training loss against eq. 11 of the paper, written out here independently: with the
whole training set as one batch (the bank holding the same representations), the loss value and
its gradient with respect to both networks' outputs equal those of
alpha Psi_1 + beta Psi_2 + gamma Psi_3 (eq. 6, 7, 10) divided by N^2."""

from __future__ import annotations

import itertools

import pytest
import torch

from model.training.methods import build_method
from model.training.methods.base import Batch, TrainState

N, K, L = 14, 6, 16


def paper_similarity(labels: torch.Tensor) -> torch.Tensor:
    """Eq. 3-4 pair by pair: (K - |y_i xor y_j|) / K when i and j share a category, else
    -|y_i xor y_j| / K."""
    n, k = labels.shape
    s = torch.zeros(n, n, dtype=torch.float64)
    for i, j in itertools.product(range(n), range(n)):
        xor = int((labels[i] != labels[j]).sum())
        shared = bool((labels[i] * labels[j]).sum() > 0)
        s[i, j] = (k - xor) / k if shared else -xor / k
    return s


def paper_objective(
    g_v: torch.Tensor, g_t: torch.Tensor, labels: torch.Tensor, alpha: float, beta: float, gamma: float
) -> torch.Tensor:
    """Eq. 11 over all N items, every sum taken literally (double loops), divided by N^2."""
    n, bits = g_v.shape
    s = paper_similarity(labels)
    h_v = [g_v[i] / g_v[i].norm() for i in range(n)]  # eq. 2
    h_t = [g_t[i] / g_t[i].norm() for i in range(n)]
    b_v = [torch.where(h >= 0, 1.0, -1.0).double() / bits**0.5 for h in h_v]  # eq. 9 (a constant)
    b_t = [torch.where(h >= 0, 1.0, -1.0).double() / bits**0.5 for h in h_t]
    psi1 = sum((s[i, j] - h_v[i] @ h_t[j]) ** 2 for i in range(n) for j in range(n))  # eq. 6
    psi2 = sum(
        (s[i, j] - h_v[i] @ h_v[j]) ** 2 + (s[i, j] - h_t[i] @ h_t[j]) ** 2 for i in range(n) for j in range(n)
    )  # eq. 7
    psi3 = sum((1 - h_v[i] @ b_v[i]) ** 2 + (1 - h_t[j] @ b_t[j]) ** 2 for i in range(n) for j in range(n))  # eq. 10
    return (alpha * psi1 + beta * psi2 + gamma * psi3) / n**2


def full_batch(labels: torch.Tensor, g_v: torch.Tensor, g_t: torch.Tensor) -> tuple[Batch, TrainState]:
    state = TrainState(labels=labels.float(), image_bank=g_v.detach().clone(), text_bank=g_t.detach().clone())
    index = torch.arange(len(labels))
    batch = Batch(
        index=index,
        labels=labels.float(),
        image_features=torch.zeros(len(labels), 1),
        text_features=torch.zeros(len(labels), 1),
    )
    return batch, state


@pytest.mark.parametrize(
    ("alpha", "beta", "gamma"), [(1.0, 0.1, 0.1), (0.5, 1.0, 0.0), (0.0, 1.0, 0.0), (1.0, 0.3, 2.0)]
)
def test_gradient_matches_autograd_of_eq_11(alpha: float, beta: float, gamma: float) -> None:
    gen = torch.Generator().manual_seed(3)
    labels = (torch.rand(N, K, generator=gen) < 0.35).to(torch.uint8)
    labels[torch.arange(N), torch.randint(0, K, (N,), generator=gen)] = 1  # every item has a label
    g_v = torch.randn(N, L, generator=gen, dtype=torch.float64, requires_grad=True)
    g_t = torch.randn(N, L, generator=gen, dtype=torch.float64, requires_grad=True)

    method = build_method("bi_ncmh", {"alpha": alpha, "beta": beta, "gamma": gamma})
    batch, state = full_batch(labels, g_v, g_t)
    ours = method.loss(g_v, g_t, batch, state)["loss"]
    ours_v, ours_t = torch.autograd.grad(ours, (g_v, g_t))

    paper = paper_objective(g_v, g_t, labels, alpha, beta, gamma)
    paper_v, paper_t = torch.autograd.grad(paper, (g_v, g_t))

    assert float(ours.detach()) == pytest.approx(float(paper.detach()), rel=1e-6, abs=1e-9)
    scale = float(max(paper_v.abs().max(), paper_t.abs().max()))
    assert torch.allclose(ours_v, paper_v, rtol=1e-5, atol=1e-7 * scale)
    assert torch.allclose(ours_t, paper_t, rtol=1e-5, atol=1e-7 * scale)


def test_one_sided_intra_term_alone_would_halve_beta() -> None:
    """The factor the correction removes: the one-sided intra term's gradient is that of eq. 7
    with beta / 2 (why the loss doubles it)."""
    from model.training.losses import similarity_regression
    from model.training.similarity import bi_direction_similarity

    gen = torch.Generator().manual_seed(5)
    labels = (torch.rand(N, K, generator=gen) < 0.4).to(torch.uint8)
    g_v = torch.randn(N, L, generator=gen, dtype=torch.float64, requires_grad=True)
    g_t = torch.randn(N, L, generator=gen, dtype=torch.float64, requires_grad=True)
    h_v, h_t = torch.nn.functional.normalize(g_v, dim=1), torch.nn.functional.normalize(g_t, dim=1)
    s = bi_direction_similarity(labels, labels).double()
    one_sided = similarity_regression(s, h_v, h_v.detach()) + similarity_regression(s, h_t, h_t.detach())
    grads = torch.autograd.grad(one_sided, (g_v, g_t))
    paper = paper_objective(g_v, g_t, labels, alpha=0.0, beta=0.5, gamma=0.0)
    expected = torch.autograd.grad(paper, (g_v, g_t))
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-10)
