"""kdpipe: task-specific knowledge distillation of transformer classifiers.

Each pipeline step is a plain function in this package (no kfp import here); the KFP
components in ../../components are thin wrappers around them.
"""

__version__ = "0.1.0"
