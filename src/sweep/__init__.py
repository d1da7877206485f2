"""sweep: experiment-tracked hyperparameter sweeps for LoRA fine-tuning on MLX.

Importing the package sets MLX's CPU backend up for speed before mlx itself is imported
anywhere: a fast BLAS (:mod:`sweep.blas`) and fused kernels built for this CPU
(:mod:`sweep.native_kernels`). Nothing heavy is imported here.
"""

from sweep.blas import use_fast_blas as _use_fast_blas
from sweep.native_kernels import use_native_kernels as _use_native_kernels

__version__ = "0.1.0"

_use_fast_blas()
_use_native_kernels()
