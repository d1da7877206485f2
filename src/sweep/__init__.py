"""sweep: experiment-tracked hyperparameter sweeps for LoRA fine-tuning on MLX.

Importing the package loads a fast BLAS for MLX's CPU backend before mlx itself is
imported anywhere (see :mod:`sweep.blas`). Nothing heavy is imported here.
"""

from sweep.blas import use_fast_blas as _use_fast_blas

__version__ = "0.1.0"

_use_fast_blas()
