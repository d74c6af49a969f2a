"""safeft.kernels: fused training kernels, each with a pure-torch reference beside it."""

from .fused_linear_cross_entropy import fused_linear_cross_entropy

__all__ = ["fused_linear_cross_entropy"]
