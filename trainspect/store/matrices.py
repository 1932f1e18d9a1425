"""Packing small 2-D tables (calibration bins, layer heatmaps) into matrix rows."""

from __future__ import annotations

import numpy as np

from trainspect.errors import TrainspectError


def pack_matrix(values: list[list[float]]) -> tuple[int, int, bytes]:
    array = np.asarray(values, dtype="<f8")
    if array.ndim != 2:
        raise TrainspectError(f"expected a 2-D matrix, got shape {array.shape}")
    return array.shape[0], array.shape[1], array.tobytes()


def unpack_matrix(n_rows: int, n_cols: int, blob: bytes) -> list[list[float]]:
    return np.frombuffer(blob, dtype="<f8").reshape(n_rows, n_cols).tolist()
