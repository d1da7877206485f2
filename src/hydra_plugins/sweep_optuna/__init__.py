"""sweep's Optuna sweeper for Hydra (Optuna 5, pruning, resumable, shared studies)."""
