"""The project's errors: bad input, and trials whose result means nothing. The CLI shows
either as one line and exits with status 2; inside a sweep the trial ends FAIL."""


class SweepError(ValueError):
    """Bad input (config, data, model path). The message names the key, file or line."""


class TrialFailed(SweepError):
    """The trial cannot give a meaningful result (no answer tokens to train on, a
    non-finite loss, a collapsed model); the message says why."""
