"""Fréchet-distance speed: feddf.audit.fid.frechet_distance vs pytorch-fid's calculate_frechet_distance (scipy sqrtm)
on the same 2048-d statistics, measured in the same run.

    .venv/bin/python benchmarks/bench_fid.py            # 1-4 minutes on 2 shared CPU cores (scipy sqrtm dominates)

Figures:
  * ratio = pytorch-fid seconds / ours, full-rank case: statistics of 4096 synthetic 2048-d features (as with a real
    reference set); ours = two symmetric eigenproblems, theirs = a general sqrtm of S1 S2. Target: ratio > 1.
  * low_rank_ratio: the usual CPU audit, 500 source images against the full-rank reference; ours uses the (500, 500)
    factor shortcut (StatsAccumulator.factor()).
  * rel_diff_*: |ours - theirs| / theirs, i.e. both give the same number.
The last line is one JSON object.
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path


def _features(n, d, seed, shift):
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    return np.abs(rng.normal(size=(n, d)) @ a + shift)       # non-negative, like post-ReLU pool features


def _time(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    import numpy as np
    from pytorch_fid.fid_score import calculate_frechet_distance

    from feddf.audit import fid as F

    d = F.FEATURE_DIMS
    ref = _features(4096, d, 0, 0.0)
    src = _features(4096, d, 1, 0.1)
    mr, sr = F.activation_stats(ref)
    ms, ss = F.activation_stats(src)
    warnings.simplefilter("ignore")
    t_ours, ours = _time(lambda: F.frechet_distance(ms, ss, mr, sr))
    t_theirs, theirs = _time(lambda: float(calculate_frechet_distance(ms, ss, mr, sr)))
    print(f"full rank   : ours {t_ours:.2f}s  pytorch-fid {t_theirs:.2f}s  FID {ours:.6f} vs {theirs:.6f}")

    acc = F.StatsAccumulator()
    acc.update(src[:500])
    ml, sl = acc.finalize()
    t_low, low = _time(lambda: F.frechet_distance(ml, sl, mr, sr, factor1=acc.factor()))
    t_low_theirs, low_theirs = _time(lambda: float(calculate_frechet_distance(ml, sl, mr, sr)))
    print(f"500 vs 4096 : ours {t_low:.2f}s  pytorch-fid {t_low_theirs:.2f}s  FID {low:.6f} vs {low_theirs:.6f}")
    print(json.dumps({"bench": "fid", "ratio": round(t_theirs / t_ours, 2), "ours_s": round(t_ours, 3),
                      "pytorch_fid_s": round(t_theirs, 3), "rel_diff_full": abs(ours - theirs) / abs(theirs),
                      "low_rank_ratio": round(t_low_theirs / t_low, 2), "low_rank_ours_s": round(t_low, 3),
                      "low_rank_pytorch_fid_s": round(t_low_theirs, 3),
                      "rel_diff_low_rank": abs(low - low_theirs) / abs(low_theirs), "dims": d,
                      "numpy": np.__version__}))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
