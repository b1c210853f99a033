"""What the operator decides and does: the reconciler, the per-group pipeline, jobs, anti-entropy."""
