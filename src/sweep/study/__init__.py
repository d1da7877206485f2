"""The shared Optuna study: which trials won (:mod:`sweep.study.winner`), and the
compatibility door to library internals (:mod:`sweep.study._compat`)."""
