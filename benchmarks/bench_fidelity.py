"""Precision/recall/density/coverage speed and memory: feddf.audit.fidelity.prdc (blocked torch) against the reference
implementation `prdc` (clovaai; full N x M, N x N and M x M distance matrices in numpy), measured in the same run.

    .venv/bin/python benchmarks/bench_fidelity.py                 # ~2-4 minutes on 2 shared CPU cores
    .venv/bin/python benchmarks/bench_fidelity.py --device cuda   # ours on a GPU (prdc stays on the CPU)

Each measurement runs in its own subprocess, so its peak RSS (ru_maxrss) is its own; the numbers are random 128-d
features (the cnn labeler's penultimate width), synthetic ~ N(0.2, 1.2^2), reference ~ N(0, 1).
Figures:
  * ours_s / ours_rss_mb at the target size: --n-fake 50 000 synthetic vs --n-real 10 000 reference;
  * at --prdc-n (the largest size prdc holds here: its 3 float64 matrices plus argpartition's int64 copy are
    ~4 x 8 x n^2 bytes, 3.2 GB at 10 000 vs 10 000, 80 GB at 50 000): prdc_s, prdc_rss_mb, ours_same_s, and
    ratio = prdc seconds / ours at that size (target > 1), rss_ratio likewise, max_abs_diff of the four metrics.
The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _features(n_real: int, n_fake: int, dims: int):
    import numpy as np

    rng = np.random.default_rng(0)
    real = rng.standard_normal((n_real, dims))
    fake = rng.standard_normal((n_fake, dims)) * 1.2 + 0.2
    return real, fake


def _child(which: str, n_real: int, n_fake: int, dims: int, k: int, device: str) -> None:
    import contextlib
    import io

    real, fake = _features(n_real, n_fake, dims)
    if which == "ours":       # imports outside the timed region (torch's import alone is ~2 s and ~300 MB)
        import torch

        from feddf.audit.fidelity import prdc

        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024       # features + imports
        t = time.perf_counter()
        r = prdc(real, fake, k, device=torch.device(device))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    else:
        from prdc import compute_prdc

        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):       # prdc prints the sizes
            r = compute_prdc(real, fake, k)
    secs = time.perf_counter() - t
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": secs, "rss_mb": rss_mb, "rss_before_mb": rss0,
                      **{m: float(r[m]) for m in ("precision", "recall", "density", "coverage")}}))


def _run(which: str, n_real: int, n_fake: int, dims: int, k: int, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--n-real", str(n_real), "--n-fake", str(n_fake),
           "--dims", str(dims), "--k", str(k), "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env=None, cwd=Path(__file__).resolve().parents[1]).stdout
    res = json.loads(out.strip().splitlines()[-1])
    print(f"{which:5s} {n_fake:6d} synthetic vs {n_real:6d} reference, {dims}-d: {res['seconds']:7.2f} s, "
          f"peak RSS {res['rss_mb']:7.0f} MB ({res['rss_before_mb']:.0f} before computing)  (P {res['precision']:.4f} R {res['recall']:.4f} "
          f"D {res['density']:.4f} C {res['coverage']:.4f})", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=["ours", "prdc"])
    ap.add_argument("--n-real", type=int, default=10_000)
    ap.add_argument("--n-fake", type=int, default=50_000)
    ap.add_argument("--prdc-n", type=int, default=10_000, help="synthetic size of the prdc comparison")
    ap.add_argument("--dims", type=int, default=128)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.child:
        return _child(a.child, a.n_real, a.n_fake, a.dims, a.k, a.device)
    big = _run("ours", a.n_real, a.n_fake, a.dims, a.k, a.device)
    same = _run("ours", a.n_real, a.prdc_n, a.dims, a.k, a.device)
    ref = _run("prdc", a.n_real, a.prdc_n, a.dims, a.k, "cpu")
    diff = max(abs(same[m] - ref[m]) for m in ("precision", "recall", "density", "coverage"))
    print(json.dumps({"bench": "fidelity", "device": a.device, "dims": a.dims, "k": a.k, "n_real": a.n_real,
                      "n_fake": a.n_fake, "ours_s": round(big["seconds"], 2), "ours_rss_mb": round(big["rss_mb"]),
                      "ours_rss_before_mb": round(big["rss_before_mb"]),
                      "prdc_n": a.prdc_n, "prdc_s": round(ref["seconds"], 2), "prdc_rss_mb": round(ref["rss_mb"]),
                      "prdc_rss_before_mb": round(ref["rss_before_mb"]),
                      "ours_same_s": round(same["seconds"], 2), "ours_same_rss_mb": round(same["rss_mb"]),
                      "ratio": round(ref["seconds"] / same["seconds"], 2),
                      "rss_ratio": round(ref["rss_mb"] / same["rss_mb"], 2), "max_abs_diff": diff}))


if __name__ == "__main__":
    main()
