"""Taking a trained adapter away: fused model and GGUF export, chat, the MLflow model."""
