"""sweep: experiment-tracked hyperparameter sweeps for LoRA fine-tuning on MLX.

Importing the package sets MLX's CPU backend up for speed before mlx itself is imported
anywhere: the fastest BLAS for this CPU (:mod:`sweep.blas`), fused kernels built for this
CPU (:mod:`sweep.native_kernels`) and a heap that keeps freed buffers
(:mod:`sweep.allocator`). Nothing heavy is imported here.
"""

from sweep.allocator import keep_freed_memory as _keep_freed_memory
from sweep.blas import use_fast_blas as _use_fast_blas
from sweep.native_kernels import use_native_kernels as _use_native_kernels

__version__ = "0.1.0"

_keep_freed_memory()
_use_fast_blas()
_use_native_kernels()
