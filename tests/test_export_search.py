"""The export search's choice (kdpipe.export_search), on rows whose figures are given: the fastest variant inside
the metric drop and the flip budget; without a flip rate set, no more flips than the reference variant."""

from types import SimpleNamespace

import pytest

from kdpipe.export_search import Candidate, _best, _why_not, first_candidates


def row(name, speed, flips, drop=0.0, n=100):
    return {"candidate": name, "speed": speed, "flips": flips, "flip_rate": flips / n, "metric_drop": drop,
            "metric": "accuracy"}


def limits(rate=None, drop=0.02):
    return SimpleNamespace(max_int8_label_flip_rate=rate, max_int8_metric_drop=drop)


def test_candidates_per_mode():
    graphs = ["fused", "lean", "unfused"]
    assert [c.name for c in first_candidates("off", graphs)] == ["fused/dynamic"]
    assert [c.name for c in first_candidates("fast", graphs)] == ["fused/dynamic", "lean/dynamic", "unfused/dynamic"]
    assert [c.name for c in first_candidates("full", graphs)] == [
        "fused/dynamic", "lean/dynamic", "unfused/dynamic", "fused/static", "lean/static", "unfused/static"]
    assert [c.name for c in first_candidates("fast", ["unfused"])] == ["unfused/dynamic"]  # not a fusable model
    assert Candidate("unfused", "dynamic", ("layer.0",)).name == "unfused/dynamic, layer.0 fp32"


@pytest.mark.parametrize("rate, drop, chosen", [
    (None, 0.02, "unfused/dynamic"),    # 6 flips <= the reference's 8; faster
    (0.07, 0.02, "unfused/dynamic"),    # a 7% bound: the reference (8%) and static (20%) out
    (0.25, 0.02, "fused/static"),       # a looser bound: the fastest wins
    (0.25, 0.001, "fused/dynamic"),     # static and unfused lose too much accuracy
    (0.01, 0.02, None),                 # nothing flips so few rows: fp32 ships
])
def test_the_fastest_inside_the_budget_ships(rate, drop, chosen):
    rows = [row("fused/dynamic", 0.70, 8, 0.0), row("unfused/dynamic", 0.58, 6, 0.005),
            row("fused/static", 0.50, 20, 0.005), {"candidate": "unfused/static", "error": "no kernel"}]
    reference_rate = rows[0]["flip_rate"]
    bound = rate if rate is not None else reference_rate
    best = _best(rows, bound, limits(rate, drop))
    assert (best or {}).get("candidate") == chosen
    assert _why_not(rows[3], bound, limits(rate, drop)) == "failed: no kernel"
    if chosen is None:
        assert all(_why_not(r, bound, limits(rate, drop)) for r in rows)


def test_why_a_variant_is_not_shipped_names_the_limit():
    too_many = row("fused/static", 0.5, 20)
    assert _why_not(too_many, 0.08, limits()) == "label flips 20.00% > the reference variant's 8.00%"
    assert _why_not(too_many, 0.05, limits(0.05)) == "label flips 20.00% > export.max_int8_label_flip_rate 5.00%"
    assert _why_not(row("x", 0.5, 0, drop=0.03), None, limits()) == (
        "accuracy drop 0.0300 > export.max_int8_metric_drop 0.02")
    assert _best([row("a", 0.6, 3), row("b", 0.6, 1)], None, limits())["candidate"] == "b"  # a tie: fewer flips


def test_speeds_within_the_machines_noise_are_level_and_fewer_flips_decide():
    """2% faster is inside this CPU's run-to-run spread: the variant with fewer flips ships; 10% faster is not."""
    assert _best([row("reference", 0.60, 5), row("other", 0.59, 9)], None, limits())["candidate"] == "reference"
    assert _best([row("reference", 0.60, 5), row("other", 0.54, 9)], None, limits())["candidate"] == "other"


def test_the_lean_graph_keeps_layer_norm_apart_and_the_fused_logits(tiny_bert, tmp_path):
    """export.to_onnx's lean graph: attention and embeddings fused, LayerNormalization and Gelu left as ONNX ops
    (their CPU kernels were the faster ones), the same logits as the fused graph in kdpipe's sessions."""
    from collections import Counter

    import numpy as np
    import onnx

    from kdpipe.export import to_onnx
    from kdpipe.modeling import load_classifier
    from kdpipe.serving import session
    from kdpipe.task import SINGLE, LabelSchema

    model, schema = load_classifier(tiny_bert), LabelSchema(SINGLE, ["0", "1"])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    fused = to_onnx(model, names, tmp_path / "fused.onnx", schema, {"producer": "test"}, lean=tmp_path / "lean.onnx")
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "lean.onnx")).graph.node)
    assert fused["SkipLayerNormalization"] > 0 and fused["Attention"] == ops["Attention"] > 0
    assert ops["SkipLayerNormalization"] == ops["BiasGelu"] == 0 and ops["LayerNormalization"] and ops["Gelu"]
    feed = {k: np.random.default_rng(0).integers(1, 100, (3, 16)) if k == "input_ids" else np.ones((3, 16), np.int64)
            for k in names}
    feed["token_type_ids"] = np.zeros((3, 16), np.int64)
    lean, full = (session(tmp_path / f).run(["logits"], feed)[0] for f in ("lean.onnx", "fused.onnx"))
    assert np.abs(lean - full).max() < 1e-4
    assert session(tmp_path / "lean.onnx").get_modelmeta().custom_metadata_map["producer"] == "test"
