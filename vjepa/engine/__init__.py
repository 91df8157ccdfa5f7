"""The training engine every job imports (and that imports no job): strict config loading and the shared
config sections, accelerator set-up and run folders, checkpoints (atomic, finite, cross-rank checked),
schedules, parameter groups, one optimizer step with the cross-rank NaN rule, the EMA update, metric
logs, collapse monitors and rank-aware seeded batch sampling."""
