"""A ``hydra.sweeper.custom_search_space`` for tests/sweeps/test_search.py: a conditional
parameter (dropout only searched when the rank is large) and a derived override."""


def dropout_for_large_ranks(cfg, trial):
    if trial.params["lora.rank"] >= 8:
        trial.suggest_float("lora.dropout", 0.0, 0.2)
    return {"optimizer.weight_decay": 0.001 * trial.params["lora.rank"]}
