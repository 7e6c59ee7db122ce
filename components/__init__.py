"""KFP components: one typed wrapper per pipeline step around kdpipe.steps.

Lightweight components (imports inside the body) on our image with install_kfp_package=False: the same
code runs under KFP's local SubprocessRunner and, unchanged, in the image on a cluster.
"""

from kdpipe_kfp.components.steps import (distill_student, evaluate_gate, evaluate_teacher, export_register,
                                         finish_tracking, hpo_best, hpo_worker, prepare_teacher, preprocess,
                                         validate_tokenizers)

__all__ = ["validate_tokenizers", "preprocess", "prepare_teacher", "evaluate_teacher", "hpo_worker", "hpo_best",
           "distill_student", "evaluate_gate", "export_register", "finish_tracking"]
