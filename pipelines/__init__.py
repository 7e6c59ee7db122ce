"""The kdpipe KFP pipeline (wiring only) and its compiled YAML (kdpipe_pipeline.yaml, kept up to date by tests)."""
