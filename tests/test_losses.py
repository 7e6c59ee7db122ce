import math

import pytest
import torch

from kdpipe.losses import LOSSES, distillation_loss


def reference_single(s, t, y, alpha, T):
    """The blog's loss written out element by element."""
    n, k = s.shape
    ce = -sum(math.log(torch.softmax(s[i], 0)[y[i]].item()) for i in range(n)) / n
    kl = 0.0
    for i in range(n):
        p = torch.softmax(t[i] / T, 0)
        q = torch.softmax(s[i] / T, 0)
        kl += sum(p[j].item() * math.log(p[j].item() / q[j].item()) for j in range(k))
    return alpha * ce + (1 - alpha) * T**2 * kl / n


def reference_multi(s, t, y, alpha, T):
    def bce(logit, target):
        p = 1 / (1 + math.exp(-logit))
        return -(target * math.log(p) + (1 - target) * math.log(1 - p))
    n, k = s.shape
    hard = sum(bce(s[i, j].item(), y[i, j].item()) for i in range(n) for j in range(k)) / (n * k)
    soft = sum(bce(s[i, j].item() / T, 1 / (1 + math.exp(-t[i, j].item() / T))) for i in range(n) for j in range(k))
    return alpha * hard + (1 - alpha) * T**2 * soft / (n * k)


@pytest.mark.parametrize("alpha, T", [(0.0, 1.0), (0.5, 4.0), (0.9, 2.0), (1.0, 7.5), (0.3, 20.0)])
def test_single_label_matches_formula(alpha, T):
    g = torch.Generator().manual_seed(int(alpha * 10 + T))
    s, t = torch.randn(6, 3, generator=g) * 3, torch.randn(6, 3, generator=g) * 3
    y = torch.randint(0, 3, (6,), generator=g)
    got = distillation_loss(s, t, y, alpha, T, "softmax_kl").item()
    assert got == pytest.approx(reference_single(s, t, y, alpha, T), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("alpha, T", [(0.0, 1.0), (0.5, 4.0), (0.8, 3.0), (1.0, 2.0)])
def test_multi_label_matches_formula(alpha, T):
    g = torch.Generator().manual_seed(int(alpha * 10 + T) + 100)
    s, t = torch.randn(5, 6, generator=g) * 2, torch.randn(5, 6, generator=g) * 2
    y = (torch.rand(5, 6, generator=g) > 0.7).float()
    got = distillation_loss(s, t, y, alpha, T, "sigmoid_bce").item()
    assert got == pytest.approx(reference_multi(s, t, y, alpha, T), rel=1e-5, abs=1e-6)


def test_soft_term_vanishes_when_student_equals_teacher():
    s = torch.randn(4, 2)
    y = torch.tensor([0, 1, 1, 0])
    only_soft = distillation_loss(s, s.clone(), y, 0.0, 4.0, "softmax_kl")
    assert only_soft.item() == pytest.approx(0.0, abs=1e-6)


def test_registry_and_alpha_one_without_teacher():
    assert {"softmax_kl", "sigmoid_bce"} <= set(LOSSES)
    s, y = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    assert distillation_loss(s, None, y, 1.0, 4.0, "softmax_kl").item() == pytest.approx(
        torch.nn.functional.cross_entropy(s, y).item())
    with pytest.raises(ValueError):
        distillation_loss(s, None, y, 0.5, 4.0, "softmax_kl")
    with pytest.raises(KeyError, match="registered"):
        distillation_loss(s, s, y, 0.5, 4.0, "nope")
