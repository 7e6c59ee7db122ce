"""The model card of a registered version: a README.md (Hugging Face model-card front matter) that travels in the
model's folder, is the registered version's description in MLflow, and goes to the Hub with `--push-to-hub`."""

from __future__ import annotations

import json


def _metrics(metrics: dict | None) -> str:
    shown = {k: v for k, v in (metrics or {}).items() if not k.startswith("roc_auc_") or k == "roc_auc_macro"}
    return ", ".join(f"{k} {v:.4f}" for k, v in shown.items()) or "-"


def model_card(cfg, info: dict, gate, exported: dict) -> str:
    """info: the dataset's data_info.json (sizes, fingerprints, schema); gate: the gate's GateDecision; exported:
    the export's result."""
    schema = info["schema"]
    multi = schema["problem_type"] == "multi_label_classification"
    checks = "\n".join(f"| {c['check']} | {'pass' if c['passed'] else 'FAIL'} | {c['reason']} |"
                       for c in gate.checks)
    lat, size = exported.get("latency_ms", {}), exported.get("size_mb", {})
    champion = gate.champion or {}
    fidelity = gate.fidelity or {}
    sizes = ", ".join(f"{k} {v}" for k, v in info["sizes"].items())
    student = (f"`{cfg.student.model}`" if cfg.student.model else
               f"{len(cfg.student.layers)} of the teacher's layers (`student.layers` {cfg.student.layers})")
    front = {"library_name": "onnx", "pipeline_tag": "text-classification", "tags": ["kdpipe", "distillation", "onnx"]}
    return f"""---
{chr(10).join(f"{k}: {json.dumps(v)}" for k, v in front.items())}
---
# {cfg.tracking.registered_model}

A student distilled by kdpipe from the teacher `{cfg.teacher.model}`: {student}, exported to ONNX
(fp32{', int8' if exported.get('int8_path') else ''}) and verified against PyTorch (max logit difference
{exported.get('max_abs_logit_diff', float('nan')):.1e}). **Served: {exported.get('served', 'fp32')}**
({'int8 (' + str(exported.get('int8_variant')) + ', chosen by the export search) passed its export checks' if exported.get('served') == 'int8' else 'int8 ' + (exported.get('int8_rejected') or 'was not made')});
`kdpipe predict --variant fp32`, or model_config `{{"variant": "fp32"}}` (`SERVING_MODEL_CONFIG` for `mlflow models serve`), runs the other file.

**Task**: {'multi-label (independent sigmoid per label)' if multi else 'single-label (softmax)'} over
{len(schema['label_names'])} labels: {', '.join(schema['label_names'])}.
{'Per-label decision thresholds (tuned on validation): ' + json.dumps(gate.thresholds) if gate.thresholds else ''}

## Data
- training data fingerprint `{info['fingerprints']['train']}`; rows: {sizes}
- sources: train `{cfg.data.train}`, validation `{cfg.data.validation}`{f", test `{cfg.data.test}`" if cfg.data.test else ''}

## Metrics
| model | split | metrics |
| --- | --- | --- |
| teacher | {gate.split} | {_metrics(gate.teacher_metrics)} |
| student | {gate.split} | {_metrics(gate.metrics)} |
| student, ONNX fp32 | validation | {_metrics(exported.get('metrics_fp32'))} |
| student, ONNX int8 | validation | {_metrics(exported.get('metrics_int8')) if exported.get('int8_path') else 'not shipped' + (': ' + exported['int8_rejected'] if exported.get('int8_rejected') else '')} |

Fidelity: decides as the teacher on {fidelity.get('teacher_agreement', float('nan')):.3f} of {gate.split} rows;
expected calibration error {fidelity.get('calibration_error', float('nan')):.4f};
int8 changes the decision on {exported.get('int8_label_flip_rate', float('nan')):.2%} of rows.
{'; '.join(gate.notes)}

## Gate: {'passed' if gate.passed else 'failed'} on {gate.metric}
| check | result | detail |
| --- | --- | --- |
{checks}
{('Champion comparison: ' + champion['reason']) if champion.get('reason') else 'No champion before this version.'}

## Speed and size (CPU)
- ONNX latency, batch 1: fp32 {lat.get('fp32_b1', float('nan')):.2f} ms{f", int8 {lat['int8_b1']:.2f} ms" if 'int8_b1' in lat else ''};
  batch 32: fp32 {lat.get('fp32_b32', float('nan')):.2f} ms{f", int8 {lat['int8_b32']:.2f} ms" if 'int8_b32' in lat else ''}; {cfg.export.latency_seq_len} tokens
- size: fp32 {size.get('fp32', float('nan')):.1f} MB{f", int8 {size['int8']:.1f} MB" if size.get('int8') else ''}
{_search(cfg, exported)}

## Intended use and limits
- Intended: the classification task and text domain of the training data above, in the language of its teacher.
- Inputs longer than {cfg.data.max_length} tokens are truncated. Scores are calibrated only as far as the ECE above says.
- The numbers are measured on the {gate.split} split named above; text from another domain or period may
  score lower. A student inherits its teacher's biases; review its errors on your own data before use.

## Use
```
mlflow models serve -m models:/{cfg.tracking.registered_model}@champion --env-manager local
curl -s localhost:5000/invocations -H 'Content-Type: application/json' -d '{{"inputs": ["some text"]}}'
kdpipe predict --model models:/{cfg.tracking.registered_model}@champion "some text"
```
"""


def push_to_hub(folder: str, repo_id: str) -> str:
    """Upload the model folder (ONNX files, tokenizer, README.md card) to a Hub model repo; the token comes from
    the environment (HF_TOKEN) only. Fails in one line when the Hub cannot be reached."""
    from huggingface_hub import HfApi

    from kdpipe.errors import ConfigError

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                                   commit_message="kdpipe: model, tokenizer and card")
    except Exception as e:  # noqa: BLE001 (offline, auth, permissions: one line, the repo named)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ConfigError(f"--push-to-hub {repo_id}: the Hugging Face Hub refused or could not be reached "
                          f"({type(e).__name__}: {first}); check the network and HF_TOKEN") from None
    return str(getattr(commit, "commit_url", commit))


def push_registered(uri: str, name: str, version: str, repo_id: str) -> str:
    """Push a registered version's model folder (with its card) to the Hub."""
    import tempfile
    from pathlib import Path

    import mlflow

    from kdpipe.artifacts import Export

    with tempfile.TemporaryDirectory(prefix="kdpipe-push-") as tmp:
        mlflow.set_tracking_uri(uri)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp))
        folder = next(local.rglob(Export.FP32)).parent  # the export folder, the pyfunc's artifact
        return push_to_hub(str(folder), repo_id)


def _search(cfg, exported: dict) -> str:
    """The export search's table (export.search), the int8 variants tried on the export step's CPU."""
    from kdpipe.export_search import search_table

    if not exported.get("int8_search"):
        return ""
    return (f"\nThe int8 variants the export tried (export.search {cfg.export.search}, "
            f"{exported['int8_search_seconds']:.1f} s), flips counted on the {exported['int8_label_flip_split']} "
            f"rows:\n\n" + search_table(exported, cfg.export.search_batch_sizes))
