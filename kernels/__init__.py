"""safeft.kernels: fused training kernels (this folder installs as `safeft.kernels`)."""

from .fused_linear_cross_entropy import fused_linear_cross_entropy

__all__ = ["fused_linear_cross_entropy"]
