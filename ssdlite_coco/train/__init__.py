"""Stage train (rules/train.smk): initial weights (fetch, check), training with resumable snapshots, the log."""
