"""kdpipe command line. Exit codes (kdpipe.errors): 0 ok (promoted, challenger, unchanged), 3 ran but the gate said
no, 2 bad input or setting, 1 other errors, 130 interrupted (Ctrl-C, SIGTERM)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from kdpipe.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, exit_code


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # not "Creating initial MLflow database tables..."


def cmd_validate_tokenizers(args) -> int:
    from kdpipe.modeling import load_tokenizer
    from kdpipe.tokenizers import compare_tokenizers

    texts = []
    if args.data:
        from kdpipe.config import DataConfig
        from kdpipe.data import read_table

        data = DataConfig(train=args.data, validation=args.data, text_column=args.text_column)
        rows = read_table(args.data, data)
        if args.text_column not in rows.column_names:
            print(f"{args.data}: no column {args.text_column!r} (columns: {rows.column_names}); use --text-column",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        texts = [t for t in rows[args.text_column] if isinstance(t, str) and t.strip()][: args.samples]
    report = compare_tokenizers(load_tokenizer(args.teacher, what="--teacher"),
                                load_tokenizer(args.student, what="--student"), texts)
    if report["match"]:
        print(f"tokenizers match: vocab {report['vocab_size']}, special tokens, normalization and "
              f"{report['texts_checked']} real texts encode identically")
        return EXIT_OK
    print("tokenizers differ; distillation needs identical input ids:", file=sys.stderr)
    for problem in report["problems"]:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_predict(args) -> int:
    if args.model.startswith(("models:/", "runs:/")):  # a registered model, from that tracking server's registry
        import mlflow

        from kdpipe.pyfunc import load_registered

        mlflow.set_tracking_uri(_tracking_uri(args))
        clf = load_registered(args.model, args.variant)
    else:
        from kdpipe.serving import OnnxClassifier

        clf = OnnxClassifier(args.model, args.variant)
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        print("kdpipe: no texts to classify: give them as arguments or one per line on standard input", file=sys.stderr)
        return EXIT_BAD_INPUT
    for row in clf.predict(texts):
        if args.json:
            print(json.dumps(row))
        else:
            scores = ", ".join(f"{k}={v:.3f}" for k, v in sorted(row["scores"].items(), key=lambda kv: -kv[1])[:5])
            print(f"{','.join(row['labels']) or '-'}\t{scores}\t{row['text']}")
    return EXIT_OK


def _tracking_uri(args) -> str:
    from kdpipe.errors import ConfigError

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError("no MLflow tracking URI: give --tracking-uri or set MLFLOW_TRACKING_URI")
    return uri


def cmd_promote(args) -> int:
    from kdpipe.deploy import rollout_hint
    from kdpipe.registry import promote

    uri = _tracking_uri(args)
    moved = promote(uri, args.name, args.version, f"kdpipe promote: {args.reason}", force=args.force)
    print(f"{args.name}: champion v{moved['champion']} (was {'v' + moved['previous'] if moved['previous'] else 'none'})")
    _print_settled(args.name, moved)
    print(rollout_hint(args.name))
    if args.push_to_hub:
        from kdpipe.model_card import push_registered

        print(f"pushed to the Hub: {push_registered(uri, args.name, moved['champion'], args.push_to_hub)}")
    return EXIT_OK


def cmd_deploy(args) -> int:
    import yaml
    from mlflow.tracking import MlflowClient

    from kdpipe.deploy import IMAGE, TRACKING_URI, render
    from kdpipe.errors import ConfigError
    from kdpipe.registry import current_champion
    from kdpipe.sources import is_url

    client = MlflowClient(_tracking_uri(args))
    champion = current_champion(client, args.name)
    if champion is None:
        raise ConfigError(f"{args.name}: no champion version in the registry; nothing to deploy")
    challenger = None
    if args.canary:
        challenger = args.challenger or client.get_model_version_by_alias(args.name, "challenger").version
    serving = {}
    if args.log_requests:
        serving = {"log_requests": args.log_requests, "log_sample_rate": args.log_sample_rate}
    env = dict(item.split("=", 1) for item in args.env or [] if "=" in item)
    if len(env) != len(args.env or []) or any(w in k.upper() for k in env for w in ("SECRET", "PASSWORD", "TOKEN")):
        raise ConfigError(f"--env {' '.join(args.env)}: KEY=VALUE pairs, and no secrets (credentials come from "
                          f"Kubernetes Secrets, as k8s/base defines them)")
    docs = render(args.name, champion, challenger, args.canary or 0, args.namespace, image=args.image or IMAGE,
                  tracking_uri=args.serving_tracking_uri or TRACKING_URI, serving_config=serving, env=env,
                  object_store_secret=bool(args.log_requests and is_url(args.log_requests)))
    text = yaml.safe_dump_all(docs, sort_keys=False)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="")
    served = f"v{champion}" + (f" ({100 - args.canary}%), challenger v{challenger} ({args.canary}%)" if challenger else "")
    print(f"{args.name}: champion {served}; apply with kubectl apply -f {args.output or '-'}", file=sys.stderr)
    return EXIT_OK


def cmd_drift(args) -> int:
    from kdpipe.config import load_config
    from kdpipe.drift_check import check_drift

    cfg = load_config(args.config, args.set)
    result = check_drift(cfg, args.texts, args.sample)
    if args.json:
        print(json.dumps(result, default=str))
        return EXIT_OK
    print(f"{cfg.tracking.registered_model} v{result['champion_version']}: "
          f"{'DRIFT' if result['drifted'] else 'no drift'} on {result['rows']} recent texts ({result['seconds']['total']:.1f} s)")
    print(f"  agreement with the teacher {result['agreement_now']:.4f} (at registration {result['agreement_then']:.4f}); "
          f"top-score PSI: champion {result['psi']:.4f}, teacher "
          f"{'-' if result['teacher_psi'] is None else format(result['teacher_psi'], '.4f')}")
    for reason in result["reasons"]:
        print(f"  - {reason}")
    return EXIT_OK


def cmd_rollback(args) -> int:
    from kdpipe.deploy import rollout_hint
    from kdpipe.registry import rollback

    moved = rollback(_tracking_uri(args), args.name, args.reason)
    print(f"{args.name}: champion back to v{moved['champion']} (was v{moved['previous']})")
    _print_settled(args.name, moved)
    print(rollout_hint(args.name))
    return EXIT_OK


def _print_settled(name: str, moved: dict) -> None:
    for version, decision in moved.get("settled", {}).items():
        print(f"{name}: v{version}, left undecided by a run that ended before deciding it: {decision}")


def cmd_compare(args) -> int:
    from kdpipe.compare import compare, log_report, print_table, write_html

    uri, experiment = args.tracking_uri, args.experiment
    if args.config:
        from kdpipe.config import load_config

        cfg = load_config(args.config, args.set)
        uri, experiment = uri or cfg.tracking.uri, experiment or cfg.tracking.experiment
    args.tracking_uri = uri
    uri = _tracking_uri(args)
    if not experiment and not args.runs:
        print("kdpipe: name the runs: a CONFIG, --experiment NAME or --runs ID...", file=sys.stderr)
        return EXIT_BAD_INPUT
    comparison = compare(uri, experiment or "", args.runs, args.last)
    print_table(comparison)
    if args.html:
        path = write_html(comparison, args.html)
        print(f"report: {path}")
        if args.log:
            print(f"logged to MLflow run {log_report(uri, experiment, comparison, path)}")
    return EXIT_OK


def cmd_run(args) -> int:
    from kdpipe.config import load_config
    from kdpipe.preflight import check_all
    from kdpipe.summary import print_summary
    from kdpipe_kfp.local import (
        run_local,  # kfp is imported by the commands that need it: --help stays fast
    )

    cfg = load_config(args.config, args.set)
    if args.runner == "docker":
        from kdpipe_kfp.containers import check_topology

        check_topology(cfg)
    check_all(cfg)
    signal.signal(signal.SIGTERM, _interrupted)  # as Ctrl-C: the run's MLflow runs are ended KILLED
    summary = run_local(cfg, args.output_dir or cfg.output_dir, runner=args.runner, force=args.force,
                        verbose=args.verbose)
    if summary.get("not_started"):  # one line: nothing ran, there is nothing else to say
        print(f"kdpipe: {summary['not_started']} (summary: {Path(summary['pipeline_root']) / 'summary.json'})",
              file=sys.stderr)
        return exit_code(summary["status"])
    print_summary(summary, steps=args.verbose)
    print(f"  summary: {Path(summary['pipeline_root']) / 'summary.json'} (also the output folder's latest); "
          f"log: {summary['log']}")
    return exit_code(summary["status"])


def cmd_distill(args) -> int:
    """Distillation across nodes: each rank of a TrainJob (k8s/multinode) runs this under torchrun."""
    from kdpipe.config import load_config
    from kdpipe.distill import distill_job
    from kdpipe.parallel import is_main
    from kdpipe.sources import fetch_file, is_url

    config = fetch_file(args.config, "config") if is_url(args.config) else args.config
    result = distill_job(load_config(config, args.set), args.dataset, args.teacher_logits, args.teacher,
                         args.output)
    if is_main():
        print(f"kdpipe distill: student {result['metrics']} -> {args.output}")
    return EXIT_OK


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_compile(args) -> int:
    from kdpipe_kfp.pipeline import compile_components, compile_pipeline

    path = compile_pipeline(args.output, placement_from_args(args))
    print(f"compiled pipeline: {path}")
    if args.components:
        print(f"compiled {len(compile_components(args.components))} component specs into {args.components}")
    return EXIT_OK


def cmd_submit(args) -> int:
    from kdpipe.config import load_config
    from kdpipe_kfp import cluster

    cfg = load_config(args.config, args.set)
    cluster.check_portable(cfg)  # before anything is sent
    placement = placement_from_args(args)
    name = args.name or f"kdpipe-{cfg.tracking.experiment}"
    if args.dry_run:
        print(json.dumps({"host": args.host, **cluster.request(cfg, placement, args.experiment, name, args.force)},
                         indent=2))
        return EXIT_OK
    sent = cluster.submit(cfg, args.host, placement, args.experiment, name, args.force)
    print(f"submitted run {sent['run_id']} ({sent['pipeline_version']}, experiment {args.experiment}): {sent['link']}")
    if not args.wait:
        return EXIT_OK
    signal.signal(signal.SIGTERM, _interrupted)
    summary = cluster.follow(sent, cfg, args.timeout)
    if "timings" in summary:
        from kdpipe.summary import print_summary

        print_summary(summary)
    else:  # MLflow is not reachable from here: the KFP state is all there is
        print(f"kdpipe run {sent['run_id']} -> {summary['status'].upper()} (gate decision: see MLflow at "
              f"{cfg.tracking.uri})" + "".join(f"\n  error: {e}" for e in summary["errors"]))
    return exit_code(summary["status"])


def cmd_schedule(args) -> int:
    from kdpipe_kfp import cluster

    if args.list:
        for s in cluster.list_schedules(args.host):
            print(f"{s['name']}\t{s['cron']}\t{s['mode']}\t{s['id']}")
        return EXIT_OK
    if args.delete:
        deleted = cluster.delete_schedule(args.host, args.delete)
        print(f"deleted schedule {args.delete} ({', '.join(deleted)})")
        return EXIT_OK
    from kdpipe.config import load_config
    from kdpipe.errors import ConfigError

    if not args.config or not args.cron:
        raise ConfigError("kdpipe schedule: give CONFIG and --cron (or --list, or --delete NAME)")
    cfg = load_config(args.config, args.set)
    cluster.check_cron(args.cron)
    cluster.check_portable(cfg)
    placement = placement_from_args(args)
    name = args.name or f"kdpipe-{cfg.tracking.experiment}"
    if args.dry_run:
        print(json.dumps({"host": args.host, "cron": args.cron, **cluster.request(cfg, placement, args.experiment,
                                                                                  name)}, indent=2))
        return EXIT_OK
    made = cluster.schedule(cfg, args.host, placement, args.experiment, name, args.cron)
    print(f"scheduled {name} ({made['cron']}, one run at a time, no catch-up): {made['recurring_run_id']}"
          + (f"; replaced {', '.join(made['replaced'])}" if made["replaced"] else ""))
    return EXIT_OK


def add_placement_args(p: argparse.ArgumentParser) -> None:
    """Where the steps run on the cluster (compile, submit, schedule)."""
    p.add_argument("--accelerator", default="nvidia.com/gpu", help='GPU resource of the training steps ("" = none)')
    p.add_argument("--gpus", type=int, default=1, help="GPUs per training step (0 = CPU only)")
    p.add_argument("--node-selector", action="append", default=[], metavar="LABEL=VALUE",
                   help="schedule the training steps on nodes with this label (repeatable)")
    p.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT",
                   help="let the training steps run on nodes with this taint, e.g. nvidia.com/gpu:NoSchedule")
    p.add_argument("--image", help="image of every step (default: the tag scripts/build-images.sh builds)")
    p.add_argument("--gpu-image", help="image of the training steps on GPUs (default: the CUDA tag)")


def add_cluster_args(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    p.add_argument("config", nargs=None if config_required else "?", help="YAML config (see docs/config.md)")
    p.add_argument("--host", required=True, help="the KFP API endpoint (as for kfp.Client; KF_PIPELINES_ENDPOINT)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--experiment", default="kdpipe", help="KFP experiment (default: kdpipe)")
    p.add_argument("--name", help="run or schedule name (default: kdpipe-<tracking.experiment>)")
    p.add_argument("--dry-run", action="store_true", help="print what would be sent; contact nothing")
    add_placement_args(p)


def placement_from_args(args):
    from kdpipe.errors import ConfigError
    from kdpipe_kfp.pipeline import Placement

    selector = {}
    for item in args.node_selector:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--node-selector {item!r}: give LABEL=VALUE, e.g. cloud.google.com/gke-accelerator=nvidia-l4")
        selector[key] = value
    tolerations = []
    for item in args.toleration:
        taint, sep, effect = item.rpartition(":")
        if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute") or not taint:
            raise ConfigError(f"--toleration {item!r}: give KEY[=VALUE]:EFFECT with EFFECT NoSchedule, "
                              f"PreferNoSchedule or NoExecute")
        key, eq, value = taint.partition("=")
        tolerations.append({"key": key, "operator": "Equal" if eq else "Exists", "value": value or None,
                            "effect": effect})
    defaults = Placement()
    return Placement(accelerator=args.accelerator, gpus=args.gpus, node_selector=selector,
                     tolerations=tuple(tolerations), image=args.image or defaults.image,
                     gpu_image=args.gpu_image or defaults.gpu_image)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline locally (KFP local runner, MLflow tracking)")
    p.add_argument("config", help="YAML config (see docs/config.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--output-dir", help="pipeline root and summary.json (default: the config's output_dir)")
    p.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                   help="subprocess: each step a local process (the embedded demo); docker: each step in the "
                        "built image, tracking to an MLflow server (see docs/operations.md)")
    p.add_argument("--force", action="store_true", help="train even when config and data are those of the run that "
                                                        "produced the current champion (otherwise: `unchanged`)")
    p.add_argument("--verbose", action="store_true", help="stream the whole log (KFP's local runner and every "
                                                          "step's output) instead of a line per step")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("distill", help="distil one student from a pipeline run's artifacts (by URL): the entry point "
                                       "of a TrainJob across nodes, run by torchrun on each (docs/operations.md)")
    p.add_argument("config", help="YAML config, a path or a URL (s3://...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--dataset", required=True, help="preprocess's dataset artifact (URL or folder)")
    p.add_argument("--teacher-logits", required=True, help="evaluate-teacher's teacher_logits artifact")
    p.add_argument("--teacher", required=True, help="the teacher (models:/NAME/VERSION, a URL or a folder)")
    p.add_argument("--output", required=True, help="where rank 0 writes the student folder (URL or folder)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("compile", help="write the pipeline YAML for a Kubeflow cluster")
    p.add_argument("-o", "--output", default="kdpipe_pipeline.yaml")
    p.add_argument("--components", metavar="DIR", help="also write each step's component spec into DIR")
    add_placement_args(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("submit", help="run the pipeline on a Kubeflow Pipelines server")
    add_cluster_args(p)
    p.add_argument("--wait", action="store_true", help="follow the run to its end; exit code as kdpipe run")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="seconds --wait waits (default: a day)")
    p.add_argument("--force", action="store_true", help="train even when config and data are the champion's")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("schedule", help="a recurring run on a Kubeflow Pipelines server (replaces one of the same name)")
    add_cluster_args(p, config_required=False)
    p.add_argument("--cron", help='6-field cron (seconds first), e.g. "0 0 3 * * *" for 03:00 daily')
    p.add_argument("--list", action="store_true", help="list the schedules on the server")
    p.add_argument("--delete", metavar="NAME", help="delete the schedule NAME")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("compare", help="pipeline runs side by side (from MLflow); --html: a report with a Pareto plot")
    p.add_argument("config", nargs="?", help="a config: its tracking.uri and tracking.experiment")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the config's, else $MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", help="MLflow experiment (default: the config's)")
    p.add_argument("--runs", nargs="+", metavar="RUN_ID", help="these pipeline runs (MLflow parent run ids)")
    p.add_argument("--last", type=int, help="only the newest N pipeline runs")
    p.add_argument("--html", metavar="FILE", help="also write an HTML report with the Pareto plot")
    p.add_argument("--log", action="store_true", help="attach the HTML report to MLflow (a `compare` run)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("promote", help="make a registered version the champion (recording the previous one)")
    p.add_argument("name", help="registered model name")
    p.add_argument("version", help="version to promote")
    p.add_argument("--reason", default="by hand", help="why (recorded on the version)")
    p.add_argument("--force", action="store_true", help="also a version that never passed the gate")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the model and its card to this Hub repo "
                                                            "(token from HF_TOKEN)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("deploy", help="the KServe manifest serving a registered model's champion (and, with "
                                      "--canary, its challenger on a share of the traffic), pinned to versions")
    p.add_argument("name", help="registered model name")
    p.add_argument("--canary", type=int, metavar="PCT", help="send PCT%% of requests to the challenger (1..99)")
    p.add_argument("--challenger", metavar="VERSION", help="the canary's version (default: the challenger alias)")
    p.add_argument("--namespace", default="kdpipe")
    p.add_argument("--image", help="the serving image (default: ghcr.io/kdpipe/kdpipe:<version>-serve)")
    p.add_argument("--serving-tracking-uri", help="the MLflow server the predictors read the model from (default: "
                                                  "k8s/base's, http://kdpipe-mlflow.kdpipe.svc.cluster.local:5000)")
    p.add_argument("--log-requests", metavar="URL", help="record a sample of requests there (s3://bucket/prefix/, "
                                                        "or a path on a mounted volume); see serving.log_requests")
    p.add_argument("--log-sample-rate", type=float, default=1.0, help="the fraction of requests recorded")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="more environment for the predictors (e.g. "
                                                                       "AWS_ENDPOINT_URL); never a secret")
    p.add_argument("-o", "--output", help="write the manifest there (default: stdout)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI to read the registry (default: $MLFLOW_TRACKING_URI)")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("drift", help="the champion against its teacher on recent texts without labels (a request log, "
                                     "any file of texts), compared with its registration baseline")
    p.add_argument("config", help="the pipeline's YAML config (its registered model, tracking, text column)")
    p.add_argument("--texts", required=True, help="recent texts: a file, a folder of request-log parts, or a URL")
    p.add_argument("--sample", type=int, help="texts drawn (default drift.sample)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--json", action="store_true", help="the figures as one JSON object")
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser("rollback", help="the champion goes back to the version it replaced")
    p.add_argument("name", help="registered model name")
    p.add_argument("--reason", default="by hand", help="why (recorded on the version)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("validate-tokenizers", help="check that teacher and student produce identical input ids")
    p.add_argument("--teacher", required=True, help="model id or directory")
    p.add_argument("--student", required=True, help="model id or directory")
    p.add_argument("--data", help="a csv/tsv/jsonl/parquet file whose texts are encoded by both")
    p.add_argument("--text-column", default="text")
    p.add_argument("--samples", type=int, default=1000)
    p.set_defaults(func=cmd_validate_tokenizers)

    p = sub.add_parser("predict", help="labels and scores from an exported or registered model")
    p.add_argument("--model", required=True, help="the export folder (model.onnx + tokenizer files), or a registered "
                                                  "model: models:/NAME@champion, models:/NAME/VERSION (the registry "
                                                  "of MLFLOW_TRACKING_URI)")
    p.add_argument("--variant", choices=["int8", "fp32"], help="run this ONNX file instead of the one the model "
                   "serves (int8 when it passed its export checks, else fp32)")
    p.add_argument("--tracking-uri", help="for a registered model: MLflow tracking URI (default: "
                                          "$MLFLOW_TRACKING_URI)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("texts", nargs="*", help="texts to classify (default: one per line on stdin)")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    from kdpipe.errors import KdpipeError

    _quiet()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KdpipeError as e:
        print(f"kdpipe: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the run's MLflow runs were ended KILLED on the way out
        print(f"kdpipe: interrupted{f' ({e})' if str(e) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
