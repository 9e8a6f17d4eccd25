"""Raw generator forward img/s vs end-to-end `feddf gen` img/s, for BigGAN-deep-128 (random weights) and a DCGAN;
with --sink, the writer itself: `feddf gen` of a near-free generator vs writing the same bytes with numpy.

    .venv/bin/python benchmarks/bench_gen.py                       # CPU, small n; ends with one JSON line
    .venv/bin/python benchmarks/bench_gen.py --threads 1            # stable figures on a busy shared machine
    .venv/bin/python benchmarks/bench_gen.py --device cuda --dtype bf16 --n-biggan 20000 --batch-biggan 1024
    .venv/bin/python benchmarks/bench_gen.py --device cuda --mode both    # bitwise and --fast, and their ratio
    .venv/bin/python benchmarks/bench_gen.py --sink --n-sink 131072 --workers 1,2   # writer throughput (ratio)

Sink mode: a TorchScript generator z (B, 8) -> clamp(z @ P) as (B, 3, 32, 32), P eight fixed smooth patterns, costs
~1.5 us per image alone, so `feddf gen` (the real CLI in a subprocess: noise, forward, uint8, the writer's encoder
pool, chunk writes, commits, fsync) measures the sampler's pipeline, not the generator (a copy-only sink gives the
same figure; docs/benchmarks.md, "Cache writer"). For each compression (default gzip, none)
and each --workers it reports the CLI's img/s with process start included (`cli_img_s`) and gen's own figure from the
open cache to the finished, fsynced one (`img_s`). The baselines, in the same run: the same uint8 images written with
numpy.ndarray.tofile to the same folder, right after warm_pages (`tofile_img_s`; with an fsync too:
`tofile_fsync_img_s`, since a finished cache is fsynced) and after --cold-wait s of idle memory (`tofile_cold_img_s`:
on this VM the two differ ~11x, which is what made earlier runs' baseline swing); and feddf gen's own pipeline in a
fresh process with a tofile sink in place of the CacheWriter (`raw_pipeline_img_s`: the same noise, forward, uint8
step and threads, the bytes appended with tofile and fsynced). ratio = best none `img_s` / raw_pipeline_img_s
(target >= 0.7: what the HDF5 writer keeps of raw tofile writes with the generator's cost held fixed; the sink is
not free, so a standalone tofile, a 4.5 GB/s memcpy when warm, is out of reach of any such pipeline:
raw_pipeline_vs_tofile), ratio_cold = / tofile_cold_img_s, ratio_tofile = / tofile_img_s; default_vs_target =
best gzip `img_s` / 52 000 (2x the 26 000 img/s that lzf and one writer thread gave; target >= 1).
`writer_only_img_s` times the CacheWriter alone fed the same ready uint8 batches (no noise, forward or uint8
conversion); ratio_writer_only = its best none figure / tofile_img_s.

"raw" runs only the generator's forward on precomputed noise, prepared exactly as `feddf gen` runs it (CPU:
batch-invariant kernels; CUDA: index-aligned groups, autocast, channels_last). "end-to-end" is `run_gen` (noise,
forward, resize + uint8, the background HDF5 writer with deflate + fletcher32, commits, coverage), timed from the open
cache to the finished one (model loading excluded in both). Each figure is the best of --reps interleaved runs;
ratio = end-to-end / raw wall-clock img/s, target >= 0.97. On a shared, overloaded machine wall-clock figures swing by
tens of percent between runs, so ratio_cpu (images per CPU-second of this process, all threads) is reported too: it
counts the pipeline's extra work and is immune to other load. loadavg says how busy the machine was. For reference
the BigGAN row also times the plain library forward (oneDNN, not batch-invariant) on CPU: the price of determinism.
--mode fast|both adds `feddf gen --fast` rows (key suffix `_fast`): raw is then the eager forward as fast mode prepares
it (no per-sample linears, cuDNN autotuning, SDPA attention, channels_last, batch-size forwards), end-to-end includes
the compiled step (--compile); `fast_over_bitwise` = fast / bitwise end-to-end img/s, and BigGAN rows give the
achieved TFLOP/s at 22.6 GFLOP per 128 px image (`tflops`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feddf.generators import get_generator  # noqa: E402
from feddf.generators.base import CUDA_GROUP, invariant_kernels, make_batch_invariant  # noqa: E402
from feddf.generators.fast import fast_kernels, prepare_fast  # noqa: E402
from feddf.generators.classes import assign, parse_classes  # noqa: E402
from feddf.generators.sample import GenConfig, run_gen  # noqa: E402
from feddf.utils import resolve_device  # noqa: E402


BIGGAN_128_GFLOP = 22.6  # per image, BigGAN-deep-128 forward


def raw_forward(gen, device, n, batch, dtype, trunc, invariant=True, mode="bitwise"):
    """img/s of the bare forward over n images in batches (as gen slices them), noise and labels precomputed."""
    plan = parse_classes("all", gen.num_classes) if gen.num_classes else None
    idx = np.arange(n)
    z = torch.from_numpy(gen.noise(0, idx, trunc)).to(device)
    y = torch.from_numpy(assign(plan, idx, 0)[0]).to(device) if plan else None
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    group = CUDA_GROUP if device.type == "cuda" and mode == "bitwise" else 0
    step = group or batch
    kernels = fast_kernels(device.type) if mode == "fast" else (invariant_kernels(device.type) if invariant
                                                                 else contextlib.nullcontext())
    with torch.inference_mode(), kernels:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            gen.forward(z[:step], y[:step] if y is not None else None, trunc)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        for s in range(0, n, step):
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                gen.forward(z[s:s + step], y[s:s + step] if y is not None else None, trunc)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - t), n / (time.process_time() - c)


def prepare(gen, device, mode="bitwise"):
    if mode == "fast":
        prepare_fast(gen, device)
        return gen
    if device.type == "cpu" and gen.batch_invariant:
        make_batch_invariant(gen.module)
    gen.module.to(device)
    if device.type == "cuda":
        gen.module.to(memory_format=torch.channels_last)
    return gen


def bench(name, gen_kwargs, cfg_kwargs, device, n, batch, dtype, reps, tmp, mode="bitwise", compile_="auto"):
    gen = prepare(get_generator(name, **gen_kwargs), device, mode)
    trunc = 0.4 if gen.uses_truncation else None
    raws, e2es, raw_cpu, e2e_cpu = [], [], [], []
    for r in range(reps):  # interleaved, best of each: robust to other load on a shared machine
        w, c = raw_forward(gen, device, n, batch, dtype, trunc, mode=mode)
        raws.append(w)
        raw_cpu.append(c)
        cfg = GenConfig(name, n, out=str(Path(tmp) / f"{name}-{r}.h5"), device=str(device), batch_size=batch,
                        dtype=dtype, mode=mode, compile=compile_ if mode == "fast" else "auto", **cfg_kwargs)
        s = run_gen(cfg, force=True, progress=False)
        e2es.append(s["img_per_s"])
        e2e_cpu.append(n / s["cpu_s"])
        size, compiled = s["bytes_per_image"], s.get("compile", "off")
    row = {"raw_img_s": round(max(raws), 3), "e2e_img_s": round(max(e2es), 3),
           "ratio": round(max(e2es) / max(raws), 4), "n": n, "batch": batch, "bytes_per_image": size,
           "raw_all": [round(x, 3) for x in raws], "e2e_all": [round(x, 3) for x in e2es],
           # images per CPU-second of this process (all threads): the pipeline's extra work, immune to other load
           "raw_img_per_cpu_s": round(max(raw_cpu), 3), "e2e_img_per_cpu_s": round(max(e2e_cpu), 3),
           "ratio_cpu": round(max(e2e_cpu) / max(raw_cpu), 4), "mode": mode, "compile": compiled}
    if name == "biggan-deep-128":  # achieved arithmetic rate; compare with the card's measured bf16 ceiling
        row["tflops"] = round(max(e2es) * BIGGAN_128_GFLOP / 1e3, 3)
        row["raw_tflops"] = round(max(raws) * BIGGAN_128_GFLOP / 1e3, 3)
    if device.type == "cpu" and name.startswith("biggan") and mode == "bitwise":
        ref = get_generator(name, **gen_kwargs)  # unpatched linears, oneDNN on
        row["plain_library_forward_img_s"] = round(raw_forward(ref, device, n, batch, dtype, trunc,
                                                               invariant=False)[0], 3)
    return row


SINK_CODE = """
import torch


class Sink(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        low = torch.randn(8, 3, 8, 8, generator=g)
        smooth = torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
        self.register_buffer("p", smooth.reshape(8, -1) * 0.35)
        self.z_dim = 8

    def forward(self, z):
        return (z @ self.p).clamp(-1.0, 1.0).view(-1, 3, 32, 32)


torch.jit.script(Sink()).save({path!r})
"""


RAW_PIPELINE = """
import json, os, sys
import feddf.cache.writer as W


class RawWriter:
    # feddf gen's writer interface, but each batch's uint8 bytes go to a plain file with ndarray.tofile (fsync at
    # finish, as a finished cache is fsynced): the same pipeline with the raw-write baseline as its sink

    def __init__(self, path, *, n, **_):
        self.path, self.n, self.committed, self.complete, self.staged = path, n, 0, False, None
        self._fh = open(path, "wb")

    def append(self, images, *_):
        images.tofile(self._fh)
        self.committed += len(images)

    def finish(self):
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.complete = True

    def close(self):
        self._fh.close()


W.CacheWriter = RawWriter
import feddf
print(json.dumps(feddf.gen(generator="torchscript", checkpoint=sys.argv[1], n=int(sys.argv[2]), out=sys.argv[3],
                           force=True, progress=False)))
"""


def warm_pages(folder: Path, nbytes: int) -> None:
    """Write and delete nbytes in folder. On this VM, memory left free for ~20 s goes back to the host, and the first
    write into it costs ~3 us per 4 KiB page: a 400 MB tofile then runs at ~350 MB/s instead of ~4.5 GB/s. Right
    after this, a write of up to nbytes gets memory the host has backed ("warm")."""
    p = folder / "warm.bin"
    with open(p, "wb") as fh:
        block = np.ones(8 << 20, np.uint8)
        for _ in range(0, nbytes, block.nbytes):
            block.tofile(fh)
    p.unlink()


def writer_only_run(path: Path, images: np.ndarray, compression: str, workers: int, batch: int = 256) -> None:
    """CacheWriter fed ready uint8 batches, as `feddf gen` feeds it (finish includes the fsync)."""
    from feddf.cache.writer import CacheWriter

    n = len(images)
    with CacheWriter(path, n=n, channels=3, resolution=32, attrs={"kind": "imported", "source": "bench"},
                     num_labels=0, compression=compression, workers=workers, force=True) as w:
        for s in range(0, n, batch):
            w.append(images[s:s + batch])
        w.finish()
    path.unlink()


def sink(args) -> dict:
    """Writer throughput of `feddf gen` on a near-free generator vs numpy tofile of the same bytes (module doc)."""
    import subprocess

    import h5py

    n, workers = args.n_sink, [int(w) for w in args.workers.split(",")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    out = {"mode": "sink", "n": n, "image": [3, 32, 32], "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0],
           "runs": []}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        ckpt = Path(tmp) / "sink.pt"
        maker = Path(tmp) / "make_sink.py"  # TorchScript compiles from source files, so the module gets one
        maker.write_text(SINK_CODE.format(path=str(ckpt)))
        subprocess.run([sys.executable, "-W", "ignore", str(maker)], check=True, env=env)
        best: dict[str, float] = {}
        for rep in range(args.reps):  # interleaved repetitions: robust to other load on a shared machine
            for comp in ("gzip", "none"):
                for w in workers:
                    cache = Path(tmp) / f"sink-{comp}-{w}.h5"
                    cmd = [sys.executable, "-m", "feddf", "gen", "--generator", "torchscript", "--checkpoint",
                           str(ckpt), "--n", str(n), "--compression", comp, "--workers", str(w), "--out", str(cache),
                           "--force", "--quiet", "--json"]
                    t = time.perf_counter()
                    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    wall = time.perf_counter() - t
                    if r.returncode:
                        raise SystemExit(f"feddf gen failed: {r.stderr.strip().splitlines()[-1:]}")
                    summary = json.loads(r.stdout.strip().splitlines()[-1])
                    row = {"compression": comp, "workers": w, "rep": rep, "img_s": summary["img_per_s"],
                           "cli_img_s": round(n / wall, 1), "cpu_s": summary["cpu_s"],
                           # images per CPU-second of the gen process (all threads): immune to other load
                           "img_per_cpu_s": round(n / summary["cpu_s"], 1) if summary["cpu_s"] else None,
                           "bytes_per_image": summary["bytes_per_image"]}
                    out["runs"].append(row)
                    print(json.dumps(row), flush=True)
                    key = f"{comp}_w{w}"
                    best[key] = max(best.get(key, 0.0), row["img_s"])
                    if comp == "none" and rep == args.reps - 1 and w == workers[-1]:
                        with h5py.File(cache, "r") as f:
                            images = f["images"][:]  # the same uint8 bytes, for the baseline
                    cache.unlink()
        raw = Path(tmp) / "raw.bin"
        pipeline = []  # feddf gen's own pipeline with RawWriter (tofile) as its sink, fresh process as gen runs
        script = Path(tmp) / "raw_pipeline.py"
        script.write_text(RAW_PIPELINE)
        for _ in range(args.reps):
            r = subprocess.run([sys.executable, "-W", "ignore", str(script), str(ckpt), str(n), str(raw)],
                               capture_output=True, text=True, env=env)
            if r.returncode:
                raise SystemExit(f"raw pipeline failed: {r.stderr.strip().splitlines()[-1:]}")
            pipeline.append(json.loads(r.stdout.strip().splitlines()[-1])["img_per_s"])
            raw.unlink()
        cold = []
        if args.cold_wait:
            for _ in range(args.reps):
                time.sleep(args.cold_wait)  # memory left free this long is back with the host (warm_pages)
                t = time.perf_counter()
                images.tofile(raw)
                cold.append(n / (time.perf_counter() - t))
                raw.unlink()
        plain, synced = [], []
        writer_only: dict[str, float] = {}
        writer_cpu: dict[str, float] = {}  # images per CPU-second of this process (all threads)
        tofile_cpu = 0.0
        for _ in range(args.reps):
            for comp in ("gzip", "none"):  # the CacheWriter alone on the same images: no generator, no uint8
                for w in workers:
                    t, c = time.perf_counter(), time.process_time()
                    writer_only_run(Path(tmp) / "w.h5", images, comp, w)
                    key = f"{comp}_w{w}"
                    writer_only[key] = max(writer_only.get(key, 0.0), n / (time.perf_counter() - t))
                    writer_cpu[key] = max(writer_cpu.get(key, 0.0), n / (time.process_time() - c))
            warm_pages(Path(tmp), images.nbytes)
            t, c = time.perf_counter(), time.process_time()
            images.tofile(raw)
            plain.append(n / (time.perf_counter() - t))
            tofile_cpu = max(tofile_cpu, n / max(time.process_time() - c, 1e-9))
            raw.unlink()
            warm_pages(Path(tmp), images.nbytes)
            t = time.perf_counter()
            with open(raw, "wb") as fh:
                images.tofile(fh)
                fh.flush()
                os.fsync(fh.fileno())
            synced.append(n / (time.perf_counter() - t))
            raw.unlink()
    out["best_img_s"] = {k: round(v, 1) for k, v in best.items()}
    out["writer_only_img_s"] = {k: round(v, 1) for k, v in writer_only.items()}
    out["writer_only_img_per_cpu_s"] = {k: round(v, 1) for k, v in writer_cpu.items()}
    out["tofile_img_per_cpu_s"] = round(tofile_cpu, 1)
    out["ratio_writer_only"] = round(max(v for k, v in writer_only.items() if k.startswith("none")) / max(plain), 4)
    out["tofile_img_s"] = round(max(plain), 1)
    out["tofile_fsync_img_s"] = round(max(synced), 1)
    none_best = max(v for k, v in best.items() if k.startswith("none"))
    gzip_best = max(v for k, v in best.items() if k.startswith("gzip"))
    out["raw_pipeline_img_s"] = round(max(pipeline), 1)
    out["ratio"] = round(none_best / max(pipeline), 4)  # the target's ratio: the writer vs raw writes, same pipeline
    if cold:
        out["tofile_cold_img_s"] = round(max(cold), 1)
        out["ratio_cold"] = round(none_best / max(cold), 4)
    out["ratio_tofile"] = round(none_best / max(plain), 4)
    out["raw_pipeline_vs_tofile"] = round(max(pipeline) / max(plain), 4)
    out["ratio_vs_fsync"] = round(none_best / max(synced), 4)
    out["default_vs_target"] = round(gzip_best / 52000, 4)
    out["target_ratio"] = 0.7
    out["loadavg_end"] = os.getloadavg()[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sink", action="store_true", help="writer throughput with a near-free generator (module doc)")
    ap.add_argument("--n-sink", type=int, default=131072, help="images per sink run (3x32x32: 3 KB each)")
    ap.add_argument("--workers", default="1,2", help="comma-separated --workers values for the sink runs")
    ap.add_argument("--cold-wait", type=float, default=30.0,
                    help="sink: seconds of idle memory before each cold tofile baseline (0: skip; warm_pages)")
    ap.add_argument("--tmp", default=None, help="folder for the sink caches and the baseline file (default: $TMPDIR)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--n-biggan", type=int, default=None, help="default: 16 on CPU, 8192 on CUDA")
    ap.add_argument("--batch-biggan", type=int, default=None, help="default: 4 on CPU, 1024 on CUDA")
    ap.add_argument("--n-dcgan", type=int, default=None, help="default: 1024 on CPU, 65536 on CUDA")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--mode", default="bitwise", choices=["bitwise", "fast", "both"],
                    help="feddf gen's default (bitwise), --fast, or both (adds *_fast rows and fast_over_bitwise)")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "graphs", "off"], help="--fast rows only")
    ap.add_argument("--only", default=None, choices=["dcgan", "biggan"], help="run one generator only")
    ap.add_argument("--batch-dcgan", type=int, default=None, help="default: 256 on CPU, 4096 on CUDA")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's). On an overloaded shared machine 2 spinning OpenMP "
                         "threads can make a forward 4x slower and erratic; --threads 1 gives stable figures there")
    args = ap.parse_args()
    if args.sink:
        print(json.dumps(sink(args), sort_keys=True))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    out = {"device": str(device), "dtype": args.dtype, "torch_threads": torch.get_num_threads(),
           "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
    if cuda:
        out["gpu"] = torch.cuda.get_device_name(device)
    modes = ["bitwise", "fast"] if args.mode == "both" else [args.mode]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "netG_epoch_0.pth"  # a pytorch/examples-size DCGAN (nz=100, ngf=64, 64x64 RGB), random
        from feddf.generators.dcgan import Generator, random_init

        torch.manual_seed(0)
        torch.save(random_init(Generator(100, 64, 3, 64)).state_dict(), ckpt)
        for mode in modes:
            sfx = "" if mode == "bitwise" else "_fast"
            if args.only in (None, "dcgan"):
                out["dcgan" + sfx] = bench("dcgan", {"checkpoint": str(ckpt)},
                                           {"checkpoint": str(ckpt), "resolution": args.resolution}, device,
                                           args.n_dcgan or (65536 if cuda else 1024),
                                           args.batch_dcgan or (256 if not cuda else 4096), args.dtype, args.reps,
                                           tmp, mode, args.compile)
                print("dcgan" + sfx, json.dumps(out["dcgan" + sfx]), flush=True)
            if args.only in (None, "biggan"):
                out["biggan_deep_128" + sfx] = bench("biggan-deep-128", {"random_weights": True},
                                                     {"random_weights": True, "resolution": args.resolution}, device,
                                                     args.n_biggan or (8192 if cuda else 16), args.batch_biggan or
                                                     (1024 if cuda else 4), args.dtype, args.reps, tmp, mode,
                                                     args.compile)
                print("biggan-deep-128" + sfx, json.dumps(out["biggan_deep_128" + sfx]), flush=True)
    out["loadavg_end"] = os.getloadavg()[0]
    rows = [k for k in ("dcgan", "biggan_deep_128") if k in out] or [k for k in ("dcgan_fast", "biggan_deep_128_fast")
                                                                      if k in out]
    out["ratio"] = min(out[k]["ratio"] for k in rows)
    out["ratio_cpu"] = min(out[k]["ratio_cpu"] for k in rows)
    out["target_ratio"] = 0.97
    for k in ("dcgan", "biggan_deep_128"):
        if k in out and k + "_fast" in out:  # the throughput mode's gain, end to end
            out[k + "_fast_over_bitwise"] = round(out[k + "_fast"]["e2e_img_s"] / out[k]["e2e_img_s"], 3)
    print(json.dumps(out, sort_keys=True))

if __name__ == "__main__":
    main()
