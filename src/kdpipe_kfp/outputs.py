"""Step results into KFP's typed outputs: numbers into a Metrics artifact, a result into a Markdown report."""

from kdpipe.tracking import flatten, numbers


def log_kfp_metrics(metrics, result: dict) -> None:
    """Numbers of a step result into a KFP Metrics artifact (flat names, as the KFP UI shows them); settings
    (params) are left out, as they are of the step's MLflow metrics."""
    from kdpipe.step import NOT_METRICS

    for key, value in numbers({k: v for k, v in result.items() if k not in NOT_METRICS}).items():
        metrics.log_metric(key, value)


def write_markdown(path: str, title: str, result: dict) -> None:
    lines = [f"# {title}", ""]
    for reason in result.get("reasons", []) + result.get("problems", []):
        lines.append(f"- {reason}")
    lines += ["", "| key | value |", "| --- | --- |"]
    skip = ("reasons", "problems", "checks", "confusion_matrix")
    for key, value in flatten({k: v for k, v in result.items() if k not in skip}).items():
        lines.append(f"| {key} | {value} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
