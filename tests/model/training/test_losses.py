"""Loss terms against plain-loop oracles, and gradient checks in double precision."""

import math

import torch

from model.training.losses import (
    balance_loss,
    negative_log_likelihood,
    quantization_loss,
    reconstruction_loss,
    relaxation_loss,
    sign_codes,
    similarity_regression,
)


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def test_sign_codes_zero_is_plus_one():
    assert sign_codes(torch.tensor([-0.5, 0.0, 2.0])).tolist() == [-1.0, 1.0, 1.0]


def test_similarity_regression_loop():
    s, a, b = _rand(3, 4, seed=1), _rand(3, 5, seed=2), _rand(4, 5, seed=3)
    loop = sum((s[i, j] - float(a[i] @ b[j])) ** 2 for i in range(3) for j in range(4)) / 12
    assert math.isclose(float(similarity_regression(s, a, b)), float(loop), rel_tol=1e-10)


def test_relaxation_loss_loop_and_zero_at_binary():
    h = torch.nn.functional.normalize(_rand(5, 8, seed=4), dim=1)
    loop = 0.0
    for row in h:
        hb = torch.sign(row) / math.sqrt(8)
        loop += (1 - float(row @ hb)) ** 2
    assert math.isclose(float(relaxation_loss(h)), loop / 5, rel_tol=1e-10)
    binary = sign_codes(_rand(5, 8, seed=5)) / math.sqrt(8)
    assert float(relaxation_loss(binary)) < 1e-20


def test_nll_loop():
    s = (torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    f, g = _rand(3, 6, seed=6), _rand(4, 6, seed=7)
    loop = 0.0
    for i in range(3):
        for j in range(4):
            theta = 0.5 * float(f[i] @ g[j])
            loop -= float(s[i, j]) * theta - math.log1p(math.exp(theta))
    assert math.isclose(float(negative_log_likelihood(s, f, g)), loop, rel_tol=1e-10)


def test_quantization_and_balance():
    b, f = sign_codes(_rand(4, 3, seed=8)), _rand(4, 3, seed=9)
    assert math.isclose(float(quantization_loss(b, f)), float(((b - f) ** 2).sum()), rel_tol=1e-12)
    col = f.sum(0)
    assert math.isclose(float(balance_loss(col)), float(col @ col), rel_tol=1e-12)


def test_reconstruction_loop():
    target, a, b = _rand(3, 3, seed=10), _rand(3, 4, seed=11), _rand(3, 4, seed=12)
    loop = 0.0
    for i in range(3):
        for j in range(3):
            cos = float(a[i] @ b[j]) / (float(a[i].norm()) * float(b[j].norm()))
            loop += (float(target[i, j]) - cos) ** 2
    assert math.isclose(float(reconstruction_loss(target, a, b)), loop / 9, rel_tol=1e-10)


def test_gradients():
    s = _rand(3, 4, seed=13)
    a = _rand(3, 5, seed=14).requires_grad_()
    b = _rand(4, 5, seed=15).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: similarity_regression(s, x, y), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: negative_log_likelihood((s > 0).double(), x, y), (a, b))
    c = _rand(3, 3, seed=16)
    bb = _rand(3, 5, seed=17).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: reconstruction_loss(c, x, y), (a, bb))
    h = torch.nn.functional.normalize(_rand(3, 5, seed=18), dim=1).requires_grad_()
    assert torch.autograd.gradcheck(relaxation_loss, (h,))
    # the relaxation gradient pulls h towards its own sign direction
    grad = torch.autograd.grad(relaxation_loss(h), h)[0]
    assert float((grad * sign_codes(h.detach())).sum()) < 0
