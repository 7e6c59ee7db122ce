"""kdpipe's KFP layer: components (kdpipe_kfp.components), the DAG and its compiled YAML (kdpipe_pipeline),
the local runner glue (local). It imports the core (kdpipe); the core never imports it."""
