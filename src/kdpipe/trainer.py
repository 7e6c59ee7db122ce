"""The one trainer for teacher fine-tuning and student distillation: HF Trainer + a KD loss."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from kdpipe import parallel
from kdpipe.errors import TrainingDiverged
from kdpipe.losses import DistillationLoss
from kdpipe.progress import training_callback

LOSS_STATE = "distillation_loss.safetensors"
COMPLETE = "kdpipe_checkpoint_complete"  # written last: a checkpoint without it was cut short (disk full, a kill)
log = logging.getLogger(__name__)


class KDCollator:
    """Pads token ids per batch and stacks what rides along with each row: the cached teacher logits, and whether
    the row has a label (transfer-set rows do not)."""

    def __init__(self, tokenizer):
        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")
        self.keys = set(tokenizer.model_input_names) | {"labels"}

    def __call__(self, rows):
        batch = self.pad([{k: v for k, v in r.items() if k in self.keys} for r in rows])
        if "teacher_logits" in rows[0]:
            batch["teacher_logits"] = torch.tensor([r["teacher_logits"] for r in rows], dtype=torch.float32)
        if "labelled" in rows[0]:
            batch["labelled"] = torch.tensor([r["labelled"] for r in rows], dtype=torch.bool)
        return batch


class DistillationTrainer(Trainer):
    """Loss = kdpipe.losses.DistillationLoss. Teacher logits come from the batch (cached) or from `teacher` run on
    the same batch (online, and always when a feature loss needs its hidden states or attentions). Evaluation
    reports the hard-label loss (no teacher pass)."""

    # compute_loss returns a per-micro-batch mean: the Trainer must divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, loss: DistillationLoss, teacher=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kd_loss = loss.to(self.args.device)
        self.teacher = teacher
        if teacher is not None:
            teacher.to(self.args.device).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        extra = [p for p in self.kd_loss.parameters() if p.requires_grad]
        if extra and not any(p is extra[0] for g in optimizer.param_groups for p in g["params"]):
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})  # before the scheduler is made
        return optimizer

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if any(True for _ in self.kd_loss.parameters()):  # projections: a resumed run needs them too
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.kd_loss.state_dict().items()}, str(folder / LOSS_STATE))
        if self.args.should_save:
            (folder / COMPLETE).touch()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        file = Path(resume_from_checkpoint) / LOSS_STATE
        if file.is_file():
            from safetensors.torch import load_file

            self.kd_loss.load_state_dict(load_file(str(file), device=str(self.args.device)))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        teacher_logits = inputs.pop("teacher_logits", None)
        labelled = inputs.pop("labelled", None)
        kd = self.kd_loss
        if not model.training:
            outputs = model(**inputs)
            loss = kd.supervised_loss(outputs.logits, labels)
            return (loss, outputs) if return_outputs else loss
        wanted = {"output_hidden_states": kd.needs("hidden_states"), "output_attentions": kd.needs("attentions")}
        outputs = model(**inputs, **wanted)
        teacher_out = None
        if self.teacher is not None and (any(wanted.values()) or (teacher_logits is None and kd.needs_teacher_logits)):
            with torch.no_grad():
                teacher_out = self.teacher(**inputs, **wanted)
            teacher_logits = teacher_out.logits if teacher_logits is None else teacher_logits
        if teacher_logits is None and kd.needs_teacher_logits:
            raise RuntimeError("distillation batch without teacher logits: the cached logits were not attached")
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(inputs["input_ids"])
        loss = kd(outputs, teacher_logits, teacher_out, labels, mask, labelled)
        if not torch.isfinite(loss.detach()):
            raise TrainingDiverged(f"the training loss became {loss.item()} at step {self.state.global_step} "
                                   f"(learning rate {self.args.learning_rate}); lower the learning rate")
        return (loss, outputs) if return_outputs else loss


def mixed_precision_flags(setting: str) -> dict:
    if setting == "no" or not torch.cuda.is_available():
        return {}
    if setting == "auto":
        setting = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {setting: True}


def training_arguments(out_dir: str | Path, *, epochs, learning_rate, batch_size, eval_batch_size=128,
                       gradient_accumulation_steps=1, weight_decay=0.0, warmup=0.0, seed=42,
                       mixed_precision="auto", group_by_length=True, dataloader_workers=0, **extra) -> TrainingArguments:
    """Checkpoint and evaluate every epoch (resume picks up the last checkpoint); logs stay quiet for pipeline pods."""
    settings = dict(
        output_dir=str(out_dir),
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        weight_decay=weight_decay,
        warmup_steps=warmup,
        seed=seed,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        logging_strategy="steps",
        logging_steps=50,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        dataloader_num_workers=dataloader_workers,
        **mixed_precision_flags(mixed_precision),
    )
    world = parallel.world_size()
    if world > 1:  # a rank of data-parallel training (kdpipe.parallel): batch_size is the global batch
        settings["per_device_train_batch_size"] = parallel.check_batch(batch_size, world, "batch_size")
        if not torch.cuda.is_available():  # accelerate runs DDP on CPU only when told the CPU is the device
            settings.update(ddp_backend="gloo", use_cpu=True)
    return TrainingArguments(**{**settings, **extra})


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint in `folder` that was written to its end. One cut short (the disk filled, or the
    process was killed, while it was saved) is removed with a line saying so: a retry resumes from the one
    before, or starts over, instead of failing on it every time."""
    while (last := get_last_checkpoint(str(folder)) if folder.is_dir() else None) is not None:
        if (Path(last) / COMPLETE).is_file():
            return last
        log.warning("kdpipe: checkpoint %s was cut short while it was saved (no %s): removed, not resumed from",
                    last, COMPLETE)
        shutil.rmtree(last)
    return None


def train(trainer: Trainer, checkpoint_dir: str | Path, run_key: str, keeper=None) -> dict:
    """Train, resuming from the newest checkpoint in checkpoint_dir when an interrupted run with the same
    run_key (settings + data fingerprint) left one; checkpoints of any other run are cleared first. `keeper`
    (kdpipe.recovery.RunCheckpoints) also keeps each epoch's checkpoint on the step's MLflow run, and brings
    back the one an earlier, killed attempt with the same run_key left there."""
    checkpoint_dir = Path(checkpoint_dir)
    key_file = checkpoint_dir / "run_key.txt"
    resumed_run = None
    if parallel.is_main():  # data parallel: rank 0 prepares the folder (one pod, one disk), the others wait
        if checkpoint_dir.is_dir() and (not key_file.is_file() or key_file.read_text() != run_key):
            shutil.rmtree(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(run_key)
        if last_complete_checkpoint(checkpoint_dir) is None and keeper is not None:
            resumed_run = keeper.restore(checkpoint_dir, run_key)
            if last_complete_checkpoint(checkpoint_dir) is None:  # kept by an older kdpipe, without the mark
                resumed_run = None
        if keeper is not None:
            trainer.add_callback(keeper.callback())
        trainer.add_callback(training_callback())
    parallel.barrier()
    # Across nodes only rank 0's disk holds the folder (and `kdpipe distill` starts fresh): nothing to resume.
    last = get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None
    result = trainer.train(resume_from_checkpoint=last)
    # Checkpoints only serve an interrupted run; kept, they would bloat the step's output artifact.
    parallel.barrier()
    if parallel.is_main():
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        if keeper is not None:
            keeper.discard()
    return {"train_runtime_s": result.metrics.get("train_runtime"), "train_loss": result.training_loss,
            "resumed_from": last, "resumed_from_run": resumed_run}
