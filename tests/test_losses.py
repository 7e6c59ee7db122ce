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


# ---------------------------------------------------------------- combined losses, feature losses, layer maps

from types import SimpleNamespace  # noqa: E402

from kdpipe.config import LossTerm, load_config  # noqa: E402
from kdpipe.errors import ConfigError  # noqa: E402
from kdpipe.layer_map import check_loss_layers, resolve_layer_map, uniform_layer_map  # noqa: E402
from kdpipe.losses import AttentionKL, DistillationLoss, HiddenMSE  # noqa: E402
from kdpipe.task import LabelSchema  # noqa: E402

SINGLE = LabelSchema(problem_type="single_label_classification", label_names=["neg", "pos"])


def bert_config(layers, hidden=8):
    return SimpleNamespace(num_hidden_layers=layers, hidden_size=hidden)


def random_mask(batch, tokens, g):
    lengths = torch.randint(1, tokens + 1, (batch,), generator=g)
    return (torch.arange(tokens)[None, :] < lengths[:, None]).long()


def test_hidden_mse_matches_formula_with_projection_and_padding():
    g = torch.Generator().manual_seed(1)
    loss = HiddenMSE(LossTerm(name="hidden_mse", layer_map={1: 3, 2: 6}), bert_config(2, 4), bert_config(6, 8))
    hs = [torch.randn(3, 5, 4, generator=g) for _ in range(3)]
    ht = [torch.randn(3, 5, 8, generator=g) for _ in range(7)]
    mask = random_mask(3, 5, g)
    got = loss(hs, ht, mask).item()
    w, b = loss.projection.weight, loss.projection.bias
    expected = 0.0
    for s, t in ((1, 3), (2, 6)):
        total, count = 0.0, 0
        for i in range(3):
            for j in range(5):
                if mask[i, j]:
                    diff = (w @ hs[s][i, j] + b) - ht[t][i, j]
                    total += sum(d.item() ** 2 for d in diff)
                    count += 8
        expected += total / count
    assert got == pytest.approx(expected / 2, rel=1e-5)


def test_hidden_mse_same_width_has_no_parameters_and_is_zero_on_equal_states():
    loss = HiddenMSE(LossTerm(name="hidden_mse"), bert_config(2, 8), bert_config(6, 8))
    assert loss.layer_map == {1: 3, 2: 6} and list(loss.parameters()) == []
    states = [torch.randn(2, 4, 8) for _ in range(7)]
    assert loss([states[0], states[3], states[6]], states, torch.ones(2, 4)).item() == pytest.approx(0.0, abs=1e-7)


def softmax_rows(x, mask):
    return torch.softmax(x.masked_fill(~mask[:, None, None, :].bool(), float("-inf")), dim=-1)


@pytest.mark.parametrize("heads_s, heads_t", [(2, 2), (2, 4)])
def test_attention_kl_matches_formula(heads_s, heads_t):
    g = torch.Generator().manual_seed(heads_t)
    loss = AttentionKL(LossTerm(name="attention_kl", layer_map={1: 2, 2: 4}), bert_config(2), bert_config(4))
    mask = random_mask(3, 5, g)
    att_s = [softmax_rows(torch.randn(3, heads_s, 5, 5, generator=g), mask) for _ in range(2)]
    att_t = [softmax_rows(torch.randn(3, heads_t, 5, 5, generator=g), mask) for _ in range(4)]
    got = loss(att_s, att_t, mask).item()
    expected = 0.0
    for s, t in ((1, 2), (2, 4)):
        ps, pt = att_s[s - 1], att_t[t - 1]
        if heads_s != heads_t:
            ps, pt = ps.mean(1, keepdim=True), pt.mean(1, keepdim=True)
        total, count = 0.0, 0
        for i in range(3):
            for h in range(ps.shape[1]):
                for q in range(5):
                    if not mask[i, q]:
                        continue
                    count += 1
                    total += sum(pt[i, h, q, k].item() * math.log(pt[i, h, q, k].item() / ps[i, h, q, k].item())
                                 for k in range(5) if mask[i, k])
        expected += total / count
    assert got == pytest.approx(expected / 2, rel=1e-5)


def test_layer_maps_default_uniform_and_are_checked():
    assert uniform_layer_map(2, 6) == {1: 3, 2: 6} and uniform_layer_map(4, 12) == {1: 3, 2: 6, 3: 9, 4: 12}
    assert resolve_layer_map({0: 0, 2: 6}, 2, 6) == {0: 0, 2: 6}  # embeddings for hidden states
    with pytest.raises(ConfigError, match="student layer 3 does not exist; the student has layers 0..2"):
        resolve_layer_map({3: 6}, 2, 6)
    with pytest.raises(ConfigError, match="teacher layer 7 .* has layers 0..6"):
        resolve_layer_map({1: 7}, 2, 6)
    with pytest.raises(ConfigError, match="attention has no layer 0"):
        resolve_layer_map({0: 0}, 2, 6, attention=True)
    d = load_config(raw=dict(tiny_raw(), distillation={"losses": [{"name": "auto"}, {"name": "attention_kl",
                                                                                  "layer_map": {1: 9}}]})).distillation
    with pytest.raises(ConfigError, match=r"distillation.losses.1.layer_map: teacher layer 9"):
        check_loss_layers(d, 2, 6)


def tiny_raw():
    from tests.conftest import SHARED_DATA as SHARED

    return {"teacher": {"model": "some/teacher"}, "student": {"layers": [0, 1]},
            "data": {"train": str(SHARED / "sst2/dev.tsv"), "validation": str(SHARED / "sst2/dev.tsv"),
                     "text_column": "sentence"}}


def test_loss_terms_config():
    d = load_config(raw=dict(tiny_raw(), distillation={"alpha": 0.3, "temperature": 2.0})).distillation
    assert [(t.name, t.alpha, t.temperature) for t in d.loss_terms()] == [("auto", 0.3, 2.0)]
    assert d.teacher_mode == "cached" and not d.needs_teacher_features
    d = load_config(raw=dict(tiny_raw(), distillation={"alpha": 0.3, "layer_map": {1: 1, 2: 6}, "losses": [
        {"name": "auto", "temperature": 8}, {"name": "hidden_mse", "weight": 2}]})).distillation
    assert [(t.name, t.alpha, t.temperature, t.layer_map) for t in d.loss_terms()] == [
        ("auto", 0.3, 8, None), ("hidden_mse", None, None, {1: 1, 2: 6})]
    assert d.teacher_mode == "online"
    assert load_config(raw=dict(tiny_raw(), distillation={"alpha": 1.0})).distillation.teacher_mode == "none"
    for bad, message in (([{"name": "hidden_mse"}], "needs a logit loss term"),
                         ([{"name": "auto"}, {"name": "hidden_mse", "alpha": 0.5}], "hidden_mse takes no alpha"),
                         ([{"name": "auto", "layer_map": {1: 1}}], "auto takes no layer_map"),
                         ([{"name": "hiden_mse"}], "distillation.losses.0.name")):
        with pytest.raises(ConfigError, match=message):
            load_config(raw=dict(tiny_raw(), distillation={"losses": bad}))


def test_default_combined_loss_is_the_blog_loss_and_transfer_rows_have_no_hard_term():
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    y = torch.randint(0, 2, (6,), generator=g)
    d = load_config(raw=dict(tiny_raw(), distillation={"alpha": 0.4, "temperature": 3.0})).distillation
    loss = DistillationLoss(d.loss_terms(), SINGLE)
    out = SimpleNamespace(logits=s)
    assert loss(out, t, None, y, torch.ones(6, 3)).item() == pytest.approx(reference_single(s, t, y, 0.4, 3.0), rel=1e-6)
    labelled = torch.tensor([True, True, True, False, False, False])
    mixed = loss(out, t, None, y, torch.ones(6, 3), labelled).item()
    hard = reference_single(s[:3], t[:3], y[:3], 1.0, 3.0)
    soft_all = reference_single(s, t, y, 0.0, 3.0)
    assert mixed == pytest.approx(0.4 * hard + 0.6 * soft_all, rel=1e-6)


def test_a_new_logit_loss_is_one_registered_function(monkeypatch):
    """Adding a logit loss touches one file: a function registered by name in kdpipe.losses. The config accepts
    the name (as distillation.loss and as a term), the combined loss computes it, unknown names are refused with
    the registered ones listed."""
    from kdpipe import losses

    monkeypatch.setattr(losses, "LOSSES", dict(losses.LOSSES))  # the registration below ends with this test

    @losses.register("logit_mse")
    def logit_mse(student_logits, teacher_logits, labels, alpha, temperature, labelled=None):
        hard = torch.nn.functional.cross_entropy(student_logits, labels.long())
        return alpha * hard + (1 - alpha) * (student_logits - teacher_logits).pow(2).mean()

    raw = {"teacher": {"model": "org/t"}, "student": {"layers": [0]},
           "data": {"dataset": "x", "train": "train", "validation": "validation"}}
    cfg = load_config(raw=raw, overrides=["distillation.loss=logit_mse", "distillation.alpha=0.25"])
    terms = cfg.distillation.loss_terms()
    assert [(t.name, t.logit, t.alpha, t.uses_teacher_logits) for t in terms] == [("logit_mse", True, 0.25, True)]
    s, t, y = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    out = SimpleNamespace(logits=s)
    combined = DistillationLoss(terms, SINGLE)(out, t, None, y, torch.ones(4, 3))
    assert combined.item() == pytest.approx(logit_mse(s, t, y, 0.25, 4.0).item())
    as_term = load_config(raw=raw, overrides=["distillation.losses=[{name: logit_mse, weight: 2}]"])
    assert as_term.distillation.loss_terms()[0].name == "logit_mse"
    with pytest.raises(ConfigError, match=r"distillation.loss: unknown loss 'logit_mae'.*logit_mse"):
        load_config(raw=raw, overrides=["distillation.loss=logit_mae"])
    with pytest.raises(ConfigError, match="'hidden_mse' is a feature loss"):
        load_config(raw=raw, overrides=["distillation.loss=hidden_mse"])
