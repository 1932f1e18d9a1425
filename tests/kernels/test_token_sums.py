"""The token probe's fold of per-row statistics (kernels.token_sums) and the one
calibration-binning rule it shares with the fixed eval, against hand-computed tables
and an independent float64 fold.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from trainspect.eval.sums import TokenSums
from trainspect.kernels import RowStats
from trainspect.kernels.token_sums import (
    COL,
    CTR,
    N_BINS,
    accumulate_rows,
    calibration_bin,
    new_state,
)
from trainspect.probes.tokens import expected_calibration_error

F32 = np.float32
# Confidences exactly on (the float32 roundings of) the bin edges, and their bins by
# hand: float32(0.7) = 0.69999999 is below 0.7, so bin 6; float32(0.6) = 0.60000002 is
# above 0.6, so bin 6; 1.0 shares the last bin.
EDGE_TABLE = [
    (0.0, 0), (F32(0.1), 1), (F32(0.2), 2), (F32(0.3), 3), (F32(0.4), 4), (0.5, 5),
    (F32(0.6), 6), (F32(0.7), 6), (F32(0.8), 8), (F32(0.9), 8), (1.0, 9),
    (np.nextafter(F32(0.1), F32(0)), 0), (np.nextafter(F32(0.7), F32(1)), 7),
    (np.nextafter(F32(1.0), F32(0)), 9),
]


def stats_of(conf, correct, valid=None, finite=None) -> tuple[RowStats, torch.Tensor]:
    """RowStats with the given confidences; argmax == label where `correct`."""
    n = len(conf)
    conf = torch.tensor(np.asarray(conf, dtype=np.float32))
    labels = torch.arange(n) % 7
    argmax = torch.where(torch.tensor(correct), labels, labels + 1)
    valid = torch.ones(n, dtype=torch.bool) if valid is None else torch.tensor(valid)
    finite = valid.clone() if finite is None else torch.tensor(finite)
    stats = RowStats(valid=valid, argmax=argmax, conf=conf, label_prob=conf * 0.5,
                     ce=-torch.log(conf * 0.5), entropy=conf * 2, finite=finite)
    return stats, labels


def test_calibration_bin_on_the_edges_matches_the_hand_table():
    conf = torch.tensor([float(c) for c, _ in EDGE_TABLE], dtype=torch.float32)
    assert calibration_bin(conf).tolist() == [b for _, b in EDGE_TABLE]
    # The float32 product the probe used to form puts two of them one bin up.
    old = (conf * N_BINS).to(torch.int64).clamp(0, N_BINS - 1)
    assert old[7] == 7 and old[9] == 9


def test_probe_and_eval_put_each_token_in_the_same_bin():
    conf = [float(c) for c, _ in EDGE_TABLE]
    correct = [i % 3 == 0 for i in range(len(conf))]
    stats, labels = stats_of(conf, correct)
    state = new_state(1, torch.device("cpu"))
    accumulate_rows(state, stats, labels, None, 1, -100, 7)
    ev = TokenSums(torch.device("cpu"))
    ev.add(stats, labels, batch=1, length=len(conf))
    assert torch.equal(state[1][0], ev.calibration)  # count, sum conf, sum correct: bit-equal
    want_counts = np.bincount([b for _, b in EDGE_TABLE], minlength=N_BINS)
    assert state[1][0, :, 0].tolist() == want_counts.tolist()


def test_ece_against_a_hand_table_and_torchmetrics():
    # Away from the edges and below 1.0, torchmetrics' bins are ours: the same ECE.
    conf = [0.05, 0.12, 0.18, 0.33, 0.47, 0.55, 0.58, 0.71, 0.86, 0.93, 0.97]
    correct = [False, True, False, False, True, True, False, True, True, True, False]
    stats, labels = stats_of(conf, correct)
    state = new_state(1, torch.device("cpu"))
    accumulate_rows(state, stats, labels, None, 1, -100, 7)
    ours = expected_calibration_error(state[1][0].numpy())
    # by hand: bins 0 {.05 x}, 1 {.12 v, .18 x}, 3 {.33 x}, 4 {.47 v}, 5 {.55 v, .58 x},
    # 7 {.71 v}, 8 {.86 v}, 9 {.93 v, .97 x}
    gaps = [0.05, abs(1 - 0.30), 0.33, 0.53, abs(1 - 1.13), 0.29, 0.14, abs(1 - 1.90)]
    assert ours == pytest.approx(sum(gaps) / len(conf), abs=1e-7)
    assert ours == pytest.approx(torchmetrics_ece(conf, correct), abs=1e-6)
    # Confidence 1.0: torchmetrics gives it a bin of its own, we share bin 9.
    conf2, correct2 = [0.92, 1.0, 1.0], [False, True, True]
    stats, labels = stats_of(conf2, correct2)
    state = new_state(1, torch.device("cpu"))
    accumulate_rows(state, stats, labels, None, 1, -100, 7)
    ours = expected_calibration_error(state[1][0].numpy())
    assert ours == pytest.approx(abs(2 - 2.92) / 3, abs=1e-7)
    assert torchmetrics_ece(conf2, correct2) == pytest.approx((0.92 + 0.0) / 3, abs=1e-6)


def torchmetrics_ece(conf, correct, n_classes=101) -> float:
    """torchmetrics' ECE of rows whose top-1 probability is `conf` (the rest spread evenly)."""
    rows = []
    for c in conf:
        rest = (1 - c) / (n_classes - 1)
        rows.append([c] + [rest] * (n_classes - 1))
    preds = torch.tensor(rows, dtype=torch.float32)
    target = torch.tensor([0 if ok else 1 for ok in correct])
    metric = MulticlassCalibrationError(num_classes=n_classes, n_bins=N_BINS, norm="l1")
    return float(metric(preds, target))


def test_fold_matches_an_independent_float64_fold():
    gen = torch.Generator().manual_seed(0)
    n, groups = 24, 3
    conf = torch.rand(n, generator=gen).clamp(0.05, 1.0).tolist()
    correct = (torch.rand(n, generator=gen) < 0.5).tolist()
    valid = (torch.rand(n, generator=gen) < 0.85).tolist()
    finite = [v and i != 5 for i, v in enumerate(valid)]
    stats, labels = stats_of(conf, correct, valid, finite)
    stats = RowStats(**{**vars(stats), "ce": torch.where(torch.tensor(finite), stats.ce,
                                                         torch.tensor(float("nan")))})
    raw = torch.where(torch.tensor(valid), labels, torch.full_like(labels, -100))
    raw[3] = 1000 if not valid[3] else raw[3]  # out of range, if that row is not valid
    state = new_state(groups, torch.device("cpu"))
    accumulate_rows(state, stats, raw, None, groups, -100, 7, last_chunk=False)
    accumulate_rows(state, stats, raw, None, groups, -100, 7, last_chunk=True)
    sums, calibration, counters, scratch = state
    ok = np.array(valid) & np.array(finite)
    hit = ok & np.array(correct)
    conf64 = np.array(conf, dtype=np.float32).astype(np.float64)
    for g in range(groups):
        sel = (np.arange(n) % groups == g) & ok
        assert sums[g, COL["tokens"]] == 2 * sel.sum()
        assert sums[g, COL["correct"]] == 2 * (hit & (np.arange(n) % groups == g)).sum()
        assert float(sums[g, COL["conf"]]) == pytest.approx(2 * conf64[sel].sum(), rel=1e-12)
        chain = np.ones(n // groups, dtype=bool)
        base_count = hits = 0
        for t in range(n // groups):
            rows = [t * groups + k for k in range(g + 1)]
            prev_ok = all(hit[r] for r in rows[:-1])
            base_count += prev_ok and ok[rows[-1]]
            hits += all(hit[r] for r in rows)
        assert sums[g, COL["chain_base"]] == 2 * base_count
        assert sums[g, COL["chain_correct"]] == 2 * hits
        del chain
    assert counters[CTR["calls"]] == 1 and counters[CTR["empty_calls"]] == 0
    assert counters[CTR["nonfinite_rows"]] == 2 * (np.array(valid) & ~np.array(finite)).sum()
    assert counters[CTR["bad_labels"]] == (2 if not valid[3] else 0)
    assert not scratch.any()
    assert calibration[:, :, 0].sum() == 2 * ok.sum()
