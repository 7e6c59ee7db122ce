"""How well the teacher was fine-tuned: the optional small search over its fine-tuning settings
(teacher.search_trials), and the prepare-teacher step's report (its learning curve, the search's trials)."""

from __future__ import annotations

import shutil
from pathlib import Path

from kdpipe.config import Config, TeacherConfig


def search_teacher(cfg: Config, data_dir: str | Path, out_dir: str | Path, keeper=None) -> dict:
    """Fine-tune once per trial, with `teacher.*` settings drawn from teacher.search_space by the HPO stage's
    machinery (kdpipe.hpo.suggest; a grid when every setting is a list of choices), each trial stopped early with
    its best epoch kept (kdpipe.teacher.finetune_teacher); the trial best on validation is the teacher, in
    out_dir/model. The result is that trial's, with every trial's figures under `search`."""
    import optuna

    from kdpipe.artifacts import load_prepared
    from kdpipe.hpo import suggest
    from kdpipe.teacher import finetune_teacher

    metric = load_prepared(data_dir).schema.primary_metric(cfg.gate.metric)
    space, out_dir = cfg.teacher.search_space, Path(out_dir)
    if all(p.type == "categorical" for p in space.values()):  # a small grid: each combination once
        sampler = optuna.samplers.GridSampler({k: p.choices for k, p in space.items()}, seed=cfg.hpo.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=cfg.hpo.seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    results: dict[int, dict] = {}
    for stale in out_dir.glob("trial-*"):  # a killed attempt's trials: this study runs its own
        shutil.rmtree(stale, ignore_errors=True)

    def objective(trial) -> float:
        params = suggest(trial, space)
        # a trial is a plain fine-tune with its settings (its own key: its checkpoints are never another trial's)
        settings = {**cfg.teacher.model_dump(), **params, "search_trials": 0}
        trial_cfg = cfg.model_copy(update={"teacher": TeacherConfig.model_validate(settings)})
        result = finetune_teacher(trial_cfg, data_dir, out_dir / f"trial-{trial.number}", keeper)
        results[trial.number] = {**result, "params": params}
        best = max(results, key=lambda n: results[n]["metrics"][metric])
        for n in results:  # only the best model so far stays on disk
            if n != best:
                shutil.rmtree(out_dir / f"trial-{n}", ignore_errors=True)
        return result["metrics"][metric]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=cfg.teacher.search_trials)  # a grid also ends when every point was tried
    best = study.best_trial.number
    shutil.rmtree(out_dir / "model", ignore_errors=True)
    shutil.move(str(out_dir / f"trial-{best}" / "model"), str(out_dir / "model"))
    shutil.rmtree(out_dir / f"trial-{best}", ignore_errors=True)
    chosen = results[best]
    search = [{"trial": n, **r["params"], metric: r["metrics"][metric], "best_epoch": r.get("best_epoch"),
               "epochs_run": r.get("epochs_run"), "train_runtime_s": r.get("train_runtime_s")}
              for n, r in sorted(results.items())]
    return {**chosen, "model_dir": str(out_dir / "model"), "search": search, "search_best_trial": best}


def learning_curve(epoch_history: list[dict]) -> list[dict]:
    """Each epoch's training loss and validation figures (kdpipe.teacher.with_train_loss), without timings."""
    return [{k: v for k, v in h.items() if k in ("epoch", "train_loss") or k.startswith("eval_") and not k.endswith(
        ("_runtime", "_per_second"))} for h in epoch_history]


REPORT = "teacher.md"


def report(cfg: Config, result: dict) -> str:
    """prepare-teacher's Markdown report (kdpipe.steps): for a teacher it fine-tuned, the learning curve, the epoch
    kept, and the search's trials when there was one; else why it fine-tuned none."""
    if not result.get("finetuned"):
        return f"# Teacher: {cfg.teacher.model}\n\nNot fine-tuned by this run: {result['reason']}.\n"
    metric, t = result["selected_by"], result.get("params") or {}
    settings = {k: t.get(k, getattr(cfg.teacher, k)) for k in ("learning_rate", "epochs", "batch_size")}
    curve, best = result.get("learning_curve") or [], result.get("best_epoch")
    names = sorted({k for h in curve for k in h if k.startswith("eval_") and k != "eval_loss"})
    lines = [f"# Teacher fine-tuning: {cfg.teacher.model}", "",
             f"Learning rate {settings['learning_rate']:g}, at most {settings['epochs']:g} epochs, batch "
             f"{settings['batch_size']}, early stopping patience {cfg.teacher.early_stopping_patience}, seed "
             f"{cfg.distillation.seed}. Ran {_epochs(result.get('epochs_run'))} epochs{_stopped(result, settings)}; "
             f"the teacher is epoch {_epochs(best)}, the best on validation {metric}.", "",
             "| epoch | training loss | validation loss | " + " | ".join(n.removeprefix("eval_") for n in names) + " |",
             "| --- " * (3 + len(names)) + "|"]
    for h in curve:
        mark = " (kept)" if best is not None and h["epoch"] == best else ""
        lines.append(f"| {_epochs(h['epoch'])}{mark} | {_num(h.get('train_loss'))} | {_num(h.get('eval_loss'))} | "
                     + " | ".join(_num(h.get(n)) for n in names) + " |")
    if result.get("search"):
        keys = [k for k in result["search"][0] if k not in ("trial", metric, "best_epoch", "epochs_run",
                                                            "train_runtime_s")]
        lines += ["", f"## Search over {', '.join(keys)}: {len(result['search'])} trials, each stopped early", "",
                  "| trial | " + " | ".join(keys) + f" | validation {metric} | best epoch | epochs run | seconds |",
                  "| --- " * (5 + len(keys)) + "|"]
        for r in result["search"]:
            chosen = " (teacher)" if r["trial"] == result.get("search_best_trial") else ""
            lines.append(f"| {r['trial']}{chosen} | " + " | ".join(f"{r[k]:g}" for k in keys)
                         + f" | {_num(r[metric])} | {_epochs(r['best_epoch'])} | {_epochs(r['epochs_run'])} | "
                         f"{_num(r['train_runtime_s'], 0)} |")
    return "\n".join(lines) + "\n"


def _stopped(result: dict, settings: dict) -> str:
    run = result.get("epochs_run")
    return " (stopped early: no gain on validation)" if run is not None and run < settings["epochs"] else ""


def _epochs(value) -> str:
    return "-" if value is None else f"{value:g}" if float(value) != round(value) else str(int(round(value)))


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
