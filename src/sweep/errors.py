"""The project's error for bad input: caught by the CLI, shown as one line, exit code 2."""


class SweepError(ValueError):
    """Bad input (config, data, model path). The message names the key, file or line."""
