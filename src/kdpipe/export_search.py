"""The export search: int8 variants of the exported student, each made, timed on the step's CPU at the configured
batch sizes and judged by its decisions (the gate's metric on validation; label flips against fp32 and
disagreements with the teacher on the evaluation rows); the fastest one inside the budget ships as
`model.int8.onnx`. export.search: `off` makes today's variant only (fused graph, dynamic per-channel int8), `fast`
adds dynamic int8 of the lean and the unfused graphs, `full` adds static int8 calibrated on training rows and the
reference with its most sensitive layer kept in fp32. docs/benchmarks.md (b) has the figures that chose these candidates."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Candidate:
    graph: str  # "fused" (ONNX Runtime's transformer fusions), "lean" (those but SkipLayerNormalization and BiasGelu:
    # export.LEAN) or "unfused" (the exporter's graph)
    method: str  # "dynamic" (weights int8, activations scaled per batch) or "static" (calibrated scales)
    keep_fp32: tuple[str, ...] = ()  # node groups (node_groups) left unquantized

    @property
    def name(self) -> str:
        kept = f", {'+'.join(self.keep_fp32)} fp32" if self.keep_fp32 else ""
        return f"{self.graph}/{self.method}{kept}"


def first_candidates(mode: str, graphs: list[str]) -> list[Candidate]:
    """The candidates tried before any sensitivity analysis. The first is the reference: today's default variant,
    whose flips bound the others' when export.max_int8_label_flip_rate is not set."""
    reference = Candidate(graphs[0], "dynamic")
    if mode == "off":
        return [reference]
    out = [reference] + [Candidate(g, "dynamic") for g in graphs[1:]]
    if mode == "full":
        out += [Candidate(g, "static") for g in graphs]
    return out


def node_groups(path: Path) -> dict[str, list[str]]:
    """The quantizable nodes of a graph by where they sit: `layer.N` (each encoder layer; a fused Attention node
    joins its layer through its weights' names), `head` (pooler and classifier) and `embeddings`."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization"):
            continue
        where = " ".join([node.name, *node.input])
        layer = re.search(r"layer[._](\d+)", where)
        group = (f"layer.{layer.group(1)}" if layer else "head" if re.search(r"pooler|classifier", where)
                 else "embeddings" if re.search(r"embed", where, re.I) or node.op_type == "Gather" else None)
        if group is None and node.op_type == "Attention":  # a fused Attention: its weights name its layer
            group = f"layer.{sum(1 for g in groups if g.startswith('layer.'))}"
        if group:
            groups.setdefault(group, []).append(node.name)
    return groups


def quantize_int8(src: Path, dst: Path, keep_fp32: list[str] | None = None) -> None:
    """Dynamic int8, one scale per output channel of each weight (as Optimum's CPU configs do): on the SST-2 student
    it flipped 8 of 872 dev labels against fp32, per-tensor scales 15, at the same speed (docs/benchmarks.md (b)).
    `keep_fp32`: nodes left unquantized."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     nodes_to_exclude=keep_fp32 or [])


def quantize(candidate: Candidate, source: Path, dst: Path, calibration=None) -> None:
    """`candidate` made from `source` (the graph it names) into dst. Static needs `calibration`: a callable
    returning an iterator of input feeds (training rows)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    excluded = [n for g in candidate.keep_fp32 for n in node_groups(source).get(g, [])]
    if candidate.method == "dynamic":
        quantize_int8(source, dst, excluded)
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = calibration()

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(source), str(dst), Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded)


@dataclass
class Searched:
    """The search's table (one row per candidate, the reference first) and the chosen row (None: no int8 passed)."""

    rows: list[dict] = field(default_factory=list)
    chosen: dict | None = None
    seconds: float = 0.0
    fp32_ms: dict = field(default_factory=dict)  # the shipped fp32 graph's times, measured in the same rounds


ROUNDS = 3  # timing rounds over all variants: a slow moment of the machine does not fall on one variant only
TIE = 0.03  # variants whose speeds differ by less are level on this (noisy) measure: fewer flips decide


def search(mode: str, graphs: dict[str, Path], work: Path, judge, timed, limits, calibration=None) -> Searched:
    """Make and judge every candidate of `mode` in `work`, time them with the shipped fp32 graph in rounds (each
    one's best round), and choose the fastest inside the budget.

    graphs: the fp32 graphs by kind (the shipped fp32 graph's first). judge(path) -> {"metric_drop", "flips",
    "flip_rate", "teacher_disagreements", "metrics"}; timed(path) -> {batch size: ms}; limits: the export config
    (max_int8_metric_drop, max_int8_label_flip_rate). Speed: the geometric mean over the batch sizes of each
    variant's time as a fraction of fp32's."""
    began = time.perf_counter()
    out = Searched()

    def made(candidate: Candidate) -> dict:
        path = work / f"{re.sub(r'[^a-z0-9]+', '-', candidate.name)}.onnx"
        row = {"candidate": candidate.name, "path": str(path), "_candidate": candidate}
        try:
            quantize(candidate, graphs[candidate.graph], path, calibration)
            row.update(judge(path))
        except Exception as e:  # noqa: BLE001 (a candidate ONNX Runtime cannot make or run is a row, not a failure)
            row.update({"error": str(e).splitlines()[0][:300] if str(e) else type(e).__name__})
        return row

    out.rows = [made(c) for c in first_candidates(mode, list(graphs))]
    if mode == "full" and "error" not in out.rows[0]:  # the reference, its most flip-prone node group in fp32
        out.rows.append(made(_least_sensitive_variant(out.rows[0]["_candidate"], graphs, work, judge, calibration)))
    timing = {"fp32": graphs[next(iter(graphs))], **{r["candidate"]: Path(r["path"]) for r in out.rows
                                                     if "error" not in r}}
    best: dict[str, dict] = {}
    for _ in range(ROUNDS):
        for name, path in timing.items():
            ms = timed(path)
            best[name] = {b: min(v, best.get(name, ms)[b]) for b, v in ms.items()}
    out.fp32_ms = best["fp32"]
    for row in out.rows:
        if "error" not in row:
            row["latency_ms"] = best[row["candidate"]]
            row["speed"] = float(np.exp(np.mean([np.log(row["latency_ms"][b] / out.fp32_ms[b]) for b in out.fp32_ms])))
            row["size_mb"] = Path(row["path"]).stat().st_size / 2**20
    reference = out.rows[0]
    flip_limit = (limits.max_int8_label_flip_rate if limits.max_int8_label_flip_rate is not None
                  else reference.get("flip_rate"))
    for row in out.rows:
        row["why_not"] = _why_not(row, flip_limit, limits)
    out.chosen = _best(out.rows, flip_limit, limits)
    for row in out.rows:
        row["chosen"] = row is out.chosen
    out.seconds = time.perf_counter() - began
    return out


def _why_not(row: dict, flip_limit: float | None, limits) -> str | None:
    if "error" in row:
        return f"failed: {row['error']}"
    why = []
    if row["metric_drop"] > limits.max_int8_metric_drop:
        why.append(f"{row.get('metric', 'metric')} drop {row['metric_drop']:.4f} > export.max_int8_metric_drop "
                   f"{limits.max_int8_metric_drop}")
    if flip_limit is not None and row["flip_rate"] > flip_limit:
        source = ("export.max_int8_label_flip_rate" if limits.max_int8_label_flip_rate is not None
                  else "the reference variant's")
        why.append(f"label flips {row['flip_rate']:.2%} > {source} {flip_limit:.2%}")
    return "; ".join(why) or None


def _best(rows: list[dict], flip_limit, limits) -> dict | None:
    """The fastest row inside the budget; rows within TIE of it are level, and of those the one with the fewest
    flips (then the smallest file) ships."""
    ok = [r for r in rows if "error" not in r and r["metric_drop"] <= limits.max_int8_metric_drop
          and (flip_limit is None or r["flip_rate"] <= flip_limit)]
    if not ok:
        return None
    fastest = min(r["speed"] for r in ok)
    return min((r for r in ok if r["speed"] <= fastest * (1 + TIE)), key=lambda r: (r["flips"], r.get("size_mb", 0)))


def _least_sensitive_variant(candidate: Candidate, graphs: dict[str, Path], work: Path, judge, calibration) -> Candidate:
    """The candidate with the one node group kept in fp32 whose quantization flips the most decisions: each group
    left in fp32 in turn, judged (not timed); the group that leaves the fewest flips."""
    flips = {}
    for group in node_groups(graphs[candidate.graph]):
        trial = Candidate(candidate.graph, candidate.method, (group,))
        path = work / "sensitivity.onnx"
        try:
            quantize(trial, graphs[candidate.graph], path, calibration)
            flips[group] = judge(path)["flips"]
        except Exception:  # noqa: BLE001 (a group ONNX Runtime cannot leave out is no candidate)
            continue
        finally:
            path.unlink(missing_ok=True)
    if not flips:
        return candidate
    return Candidate(candidate.graph, candidate.method, (min(flips, key=flips.get),))


def search_table(exported: dict, batch_sizes: list[int]) -> str:
    """The search's rows (an export result's `int8_search`) as Markdown: the model card, the step's MLflow run."""
    metric = exported.get("int8_metric", "metric")
    head = ["variant"] + [f"b{b} ms" for b in batch_sizes] + ["time / fp32", f"{metric} drop", "flips vs fp32",
                                                               "disagrees with teacher", "MB", ""]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in exported["int8_search"]:
        if "error" in r:
            lines.append(f"| {r['candidate']} |" + " |" * (len(head) - 2) + f" {r['why_not']} |")
            continue
        verdict = "**shipped**" if r["chosen"] else (r["why_not"] or "slower")
        ms = {int(b): v for b, v in r["latency_ms"].items()}  # int keys come back as strings from JSON
        lines.append("| " + " | ".join([r["candidate"], *[f"{ms[b]:.2f}" for b in batch_sizes], f"{r['speed']:.3f}",
                                        f"{r['metric_drop']:+.4f}", str(r["flips"]),
                                        str(r.get("teacher_disagreements", "-")), f"{r['size_mb']:.1f}", verdict])
                     + " |")
    return "\n".join(lines) + "\n"


def public(searched: Searched) -> list[dict]:
    """The table's rows as the step's result keeps them (no paths into the step's work folder)."""
    return [{k: v for k, v in r.items() if not k.startswith("_") and k != "path"} for r in searched.rows]
