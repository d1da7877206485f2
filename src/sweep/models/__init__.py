"""Models: GGUF import (:mod:`gguf`) and the per-process base-model cache (:mod:`loader`)."""
