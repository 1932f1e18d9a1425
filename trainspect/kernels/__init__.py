"""Fused per-row token statistics: a Triton kernel on CUDA, chunked PyTorch elsewhere.

This package imports nothing else of trainspect's (docs/architecture.md, "Layers").
"""

from .token_stats import RowStats, row_stats, triton_available

__all__ = ["RowStats", "row_stats", "triton_available"]
