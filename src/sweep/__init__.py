"""sweep: experiment-tracked hyperparameter sweeps for LoRA fine-tuning on MLX.

Importing the package (or any of its modules) changes nothing in the process: MLX's CPU
set-up for speed (a fast BLAS, fused kernels built for this CPU, heap settings) is one
explicit call, :func:`sweep.runtime.setup`, made by the entry points before mlx is
imported. Nothing heavy is imported here.
"""

__version__ = "0.1.0"
