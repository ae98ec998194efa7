"""Similarity targets against hand-computed matrices and plain-loop oracles."""

import numpy as np
import torch

from model.training.similarity import (
    bi_direction_similarity,
    binary_similarity,
    cosine_similarity_matrix,
    joint_semantics_affinity,
)


def test_bi_direction_hand_computed():
    # K = 4 categories.
    a = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0]])
    b = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 1], [1, 1, 0, 0]])
    # a0 vs b0: share cat 0, xor = 1 -> (4-1)/4 = 0.75 (eq. 3)
    # a0 vs b1: share cat 1, xor = {0,2,3} = 3 -> 0.25
    # a0 vs b2: identical -> 1
    # a1 vs b0: share none, xor = {0,2} = 2 -> -0.5 (eq. 4)
    # a1 vs b1: share cat 2, xor = {1,3} = 2 -> 0.5
    # a1 vs b2: share none, xor = {0,1,2} = 3 -> -0.75
    expected = torch.tensor([[0.75, 0.25, 1.0], [-0.5, 0.5, -0.75]])
    torch.testing.assert_close(bi_direction_similarity(a, b), expected)


def test_bi_direction_matches_loop_oracle():
    rng = np.random.default_rng(0)
    a = (rng.random((9, 7)) < 0.3).astype(np.uint8)
    b = (rng.random((11, 7)) < 0.3).astype(np.uint8)
    k = a.shape[1]
    oracle = np.zeros((9, 11))
    for i in range(9):
        for j in range(11):
            xor = int(np.sum(a[i] ^ b[j]))
            oracle[i, j] = (k - xor) / k if np.any(a[i] & b[j]) else -xor / k
    got = bi_direction_similarity(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got, oracle, atol=1e-6)
    assert got.min() >= -1 and got.max() <= 1


def test_bi_direction_single_label_takes_two_values():
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 0, 2]), 10)
    s = bi_direction_similarity(labels, labels)
    torch.testing.assert_close(s.unique(), torch.tensor([-0.2, 1.0]))


def test_binary_similarity():
    a = torch.tensor([[1, 0, 1], [0, 1, 0]])
    b = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 0, 0]])
    expected = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(binary_similarity(a, b), expected)


def _np_cos(x):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def test_joint_semantics_matches_numpy_oracle():
    rng = np.random.default_rng(1)
    fi = rng.random((6, 5))
    ft = rng.random((6, 4))
    beta, eta = 0.3, 0.4
    si, st = 2 * _np_cos(fi) - 1, 2 * _np_cos(ft) - 1
    s_tilde = beta * si + (1 - beta) * st
    m = 6
    # eq. 3 written out term by term
    expected = (1 - eta) * (beta * si + (1 - beta) * st) + eta / m * (
        beta**2 * si @ si.T
        + beta * (1 - beta) * si @ st.T
        + beta * (1 - beta) * st @ si.T
        + (1 - beta) ** 2 * st @ st.T
    )
    np.testing.assert_allclose(expected, (1 - eta) * s_tilde + eta * s_tilde @ s_tilde.T / m)
    got = joint_semantics_affinity(torch.from_numpy(fi), torch.from_numpy(ft), beta, eta, True, True).double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_cosine_rescale_maps_nonnegative_to_full_range():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s = cosine_similarity_matrix(x, rescale=True)
    assert float(s[0, 1]) == -1.0 and abs(float(s[0, 0]) - 1.0) < 1e-6
    assert float(cosine_similarity_matrix(x, rescale=False)[0, 1]) == 0.0
