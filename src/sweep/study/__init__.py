"""The shared Optuna study: which trials won (:mod:`sweep.study.winner`), and the
compatibility door to library internals (:mod:`sweep.study._compat`)."""

# Set in the extra worker processes a sweep starts on its study (hydra.sweeper.n_workers):
# they run trials only; the process the user started reports and ships the winner.
WORKER_ENV = "SWEEP_OPTUNA_WORKER"
# study user attr: the best trial that was evaluated on the test split
EVALUATED_ATTR = "evaluated_trial"
# study user attr: the study's MLflow parent run (one per study)
PARENT_ATTR = "mlflow_parent_run_id"
# study user attr: the winner trained on to its whole budget (sweep.study.finish)
FINISHED_ATTR = "finished_winner"
