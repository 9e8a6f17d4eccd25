"""The `feddf gen` plan: GenConfig, its checks, and run_gen, which decides what to sample (generator, classes,
resolution, batch, the cache's identity and attributes, the resume point, this rank's shard) and returns the summary.

    python -c "from feddf.generators.sample import GenConfig, run_gen; \
print(run_gen(GenConfig('dcgan', 64, out='/tmp/d.h5', random_weights=True), progress=False))"

The images themselves are made by the sampling loop (loop.py: forward, uint8, labeler and writer threads), the
torchrun side by ranks.py. Under torchrun (WORLD_SIZE > 1) rank r makes indices [n r / W, n (r+1) / W) into
`<stem>.shard-r-of-W.h5` and rank 0 then writes `out` as HDF5 virtual datasets over the shards
(feddf.cache.virtual.write_virtual_cache). The cache is deterministic and resumable (one process or one rank).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from feddf.errors import FeddfError
from feddf.generators.loop import generate, make_images
from feddf.generators.ranks import Rank, shard_path

DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class GenConfig:
    generator: str
    n: int
    out: str | None = None              # default cache/<generator>-<resolution>px-<n>.h5
    resolution: int | None = None       # default: the generator's (32; 28 for dcgan-fashion-mnist)
    truncation: float | None = None     # BigGAN only; default 0.4
    classes: str | None = None          # conditional generators only; default all
    seed: int = 0
    batch_size: int | None = None       # default: 16 (BigGAN on CPU), 256 otherwise
    device: str = "auto"
    weights: str | None = None
    checkpoint: str | None = None
    random_weights: bool = False
    compression: str = "gzip"           # deflate (readable by every HDF5 reader); "none"; "lzf" (h5py only)
    workers: int | None = None          # chunk-encoding threads of the writer (default: CacheWriter's); same bytes
    labeler: str | None = None
    dtype: str | None = None            # default fp32; bf16 with mode "fast" on CUDA
    chunk_images: int | None = None     # images per chunk/commit; default about 1 MiB
    z_dim: int | None = None            # torchscript only
    mode: str = "bitwise"               # "fast": throughput mode (feddf/generators/fast.py); part of the identity
    compile: str = "auto"               # fast mode: torch.compile the step (auto = on CUDA only), graphs, off
    min_confidence: float | None = None  # keep only draws the labeler predicts with at least this confidence
    balance: bool = False               # cap every labeler class at ceil(n / K) images
    oversample: float = 4.0             # with a filter: draw at most ceil(oversample * n) candidates


def validate(cfg: GenConfig) -> None:
    """Checks that need no files (pure; raises FeddfError with the bad value and the fix)."""
    from feddf.cache.layout import COMPRESSIONS
    from feddf.checks import check_seed, check_types

    check_types(cfg)  # Python callers too: types, finite floats, 64-bit ints
    if cfg.n <= 0:
        raise FeddfError(f"--n {cfg.n}: the number of images must be positive")
    if cfg.truncation is not None and not 0.0 < cfg.truncation <= 1.0:
        raise FeddfError(f"--truncation {cfg.truncation} is outside (0, 1]; BigGAN's default is 0.4")
    if cfg.resolution is not None and not 1 <= cfg.resolution <= 2048:
        raise FeddfError(f"--resolution {cfg.resolution} must be between 1 and 2048 pixels")
    if cfg.batch_size is not None and cfg.batch_size <= 0:
        raise FeddfError(f"--batch-size {cfg.batch_size} must be positive")
    if cfg.chunk_images is not None and cfg.chunk_images <= 0:
        raise FeddfError(f"--chunk-images {cfg.chunk_images} must be positive")
    if cfg.compression not in COMPRESSIONS:
        raise FeddfError(f"--compression {cfg.compression!r}: use one of {', '.join(COMPRESSIONS)}")
    from feddf.generators.fast import COMPILE_CHOICES, MODES

    if cfg.mode not in MODES:
        raise FeddfError(f"mode {cfg.mode!r}: use one of {', '.join(MODES)}")
    if cfg.compile not in COMPILE_CHOICES:
        raise FeddfError(f"--compile {cfg.compile!r}: use one of {', '.join(COMPILE_CHOICES)}")
    if cfg.compile not in ("auto", "off") and cfg.mode != "fast":
        raise FeddfError(f"--compile {cfg.compile} applies to --fast only (bitwise mode runs the eager forward)")
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        raise FeddfError(f"--dtype {cfg.dtype!r}: use one of {', '.join(DTYPES)}")
    check_seed("--seed", cfg.seed)
    if cfg.workers is not None and cfg.workers < 1:
        raise FeddfError(f"--workers {cfg.workers} must be >= 1")
    if (cfg.min_confidence is not None or cfg.balance) and not cfg.labeler:
        raise FeddfError("--min-confidence/--balance filter by a classifier's predictions: pass --labeler RUN")
    if cfg.min_confidence is not None and not 0.0 <= cfg.min_confidence < 1.0:
        raise FeddfError(f"--min-confidence {cfg.min_confidence} must be in [0, 1) (e.g. 0.8)")
    if not cfg.oversample >= 1.0:
        raise FeddfError(f"--oversample {cfg.oversample} must be >= 1 (draws per kept image, at most)")


def default_out(generator: str, resolution: int, n: int) -> str:
    return f"cache/{generator}-{resolution}px-{n}.h5"


def _labeler(spec: str, device, channels: int, resolution: int):
    """(classifier, num_classes, class names, fingerprint) for --labeler RUN_DIR_OR_CHECKPOINT."""
    import torch

    from feddf.utils import sha256_file

    try:
        from feddf.models import load_classifier
    except ImportError as e:
        raise FeddfError(f"--labeler needs feddf.models.load_classifier, which is not available ({e})") from None
    p = Path(spec)
    if not p.exists():
        raise FeddfError(f"--labeler {spec}: no such run folder or checkpoint")
    clf = load_classifier(spec, device=str(device))
    if device.type == "cpu":  # per-image predictions independent of the batch, like the images (base.py)
        from feddf.generators.base import make_batch_invariant

        make_batch_invariant(clf.model)
    with torch.inference_mode():
        k = int(clf.logits(torch.zeros(1, channels, resolution, resolution, dtype=torch.uint8, device=device)).shape[1])
    files = [p] if p.is_file() else sorted((p / "models").glob("*.pt")) or sorted(p.rglob("*.pt"))
    fp = "sha256:" + "+".join(sha256_file(f)[:16] for f in files)
    return clf, k, list(getattr(clf, "class_names", None) or []), fp


def run_gen(cfg: GenConfig, *, force: bool = False, progress: bool = True) -> dict:
    """Generate (or resume, or find complete) the cache described by cfg; returns the summary dict."""
    import torch

    from feddf.cache.virtual import write_virtual_cache
    from feddf.cache.probe import probe_cache
    from feddf.cache.writer import CacheWriter, default_workers
    from feddf.generators import get_generator
    from feddf.generators.base import CUDA_GROUP, NOISE_SCHEME, make_batch_invariant
    from feddf.generators.fast import FAST_NOTE
    from feddf.generators.classes import assign, parse_classes
    from feddf.utils import resolve_device, to_jsonable, versions

    validate(cfg)
    if cfg.out:  # before the generator loads: a link --out is never replaced
        from feddf.cache.replace import refuse_link

        refuse_link(cfg.out, force)
    ranks = Rank()
    ok = False
    try:
        device = resolve_device(cfg.device)
        if device.type == "cuda" and ranks.world > 1:
            device = torch.device("cuda", ranks.local)
        fast = cfg.mode == "fast"
        dtype = cfg.dtype or ("bf16" if fast and device.type == "cuda" else "fp32")
        if dtype != "fp32" and device.type != "cuda":
            raise FeddfError(f"--dtype {dtype} needs a CUDA device (on {device.type} use fp32)")
        gen = get_generator(cfg.generator, weights=cfg.weights, checkpoint=cfg.checkpoint,
                            random_weights=cfg.random_weights, z_dim=cfg.z_dim)
        if gen.uses_truncation:
            trunc = 0.4 if cfg.truncation is None else float(cfg.truncation)
        elif cfg.truncation is not None:
            raise FeddfError(f"--truncation applies to BigGAN only; {cfg.generator} samples z ~ N(0, 1)")
        else:
            trunc = None
        if gen.num_classes:
            plan = parse_classes(cfg.classes, gen.num_classes)
        elif cfg.classes is not None:
            raise FeddfError(f"{cfg.generator} is unconditional; --classes does not apply (use --labeler for "
                             "class coverage)")
        else:
            plan = None
        res = cfg.resolution or gen.default_resolution
        out = Path(cfg.out or default_out(cfg.generator, res, cfg.n))
        if ranks.world > cfg.n:
            raise FeddfError(f"--n {cfg.n} is smaller than the {ranks.world} processes; use more images")
        if fast:  # one fixed-shape forward of `batch` images per step (fast.py); bytes are not batch-invariant
            from feddf.generators.fast import prepare_fast, resolve_compile

            batch = cfg.batch_size or ((1024 if gen.native_resolution >= 128 else 4096) if device.type == "cuda"
                                       else (16 if gen.native_resolution >= 128 else 256))
            group, compile_mode = batch, resolve_compile(cfg.compile, device.type)
            fast_changes = prepare_fast(gen, device)
        else:
            group = CUDA_GROUP if (device.type == "cuda" or not gen.batch_invariant) else 0
            batch = cfg.batch_size or (16 if gen.native_resolution >= 128 and device.type == "cpu" else 256)
            if group:
                batch = -(-batch // group) * group  # whole groups per step
            module = gen.module
            if device.type == "cpu" and gen.batch_invariant:
                make_batch_invariant(module)
            module = module.to(device)
            if device.type == "cuda":
                module = module.to(memory_format=torch.channels_last)
            compile_mode, fast_changes = "off", None
        labeler = _labeler(cfg.labeler, device, gen.channels, res) if cfg.labeler else None

        resolved = GenConfig(**{**asdict(cfg), "out": str(out), "resolution": res, "truncation": trunc,
                                "classes": plan.spec if plan else None, "batch_size": batch,
                                "workers": cfg.workers or default_workers(), "dtype": dtype, "compile": compile_mode})
        identity = {"kind": "generated", "generator": cfg.generator, "weights_hash": gen.weights_hash,
                    "random_weights": gen.random_weights, "truncation": trunc, "seed": cfg.seed,
                    "classes": plan.describe() if plan else None, "noise": NOISE_SCHEME, "device_type": device.type,
                    "dtype": dtype, "forward_group": None if fast else group, "compression": cfg.compression,
                    "labeler": labeler[3] if labeler else None, "mode": cfg.mode}
        filtering = cfg.min_confidence is not None or cfg.balance
        if filtering:
            from feddf.generators.select import RULE

            identity["filter"] = {"rule": RULE, "min_confidence": cfg.min_confidence, "balance": cfg.balance,
                                  "oversample": cfg.oversample}
        attrs = {"kind": "generated", "generator": cfg.generator, "weights_hash": gen.weights_hash,
                 "random_weights": gen.random_weights, "truncation": trunc, "seed": cfg.seed,
                 "classes": plan.spec if plan else "none", "class_ids": list(plan.ids) if plan else None,
                 "label_names": gen.label_names, "target_names": list(plan.target_names) if plan and
                 plan.num_targets else None, "config": to_jsonable(resolved), "generator_info": gen.provenance,
                 "noise": NOISE_SCHEME, "device_type": device.type, "dtype": dtype, "forward_group": group,
                 "mode": cfg.mode, "mode_note": FAST_NOTE if fast else "bitwise: image bytes do not depend on the "
                 "batch size, resumes or ranks (one device type)", "fast_changes": fast_changes,
                 "labeler": cfg.labeler, "labeler_hash": labeler[3] if labeler else None,
                 "labeler_names": labeler[2] if labeler and labeler[2] else None, "versions": versions()}
        sizes = {"num_labels": gen.num_classes, "num_targets": plan.num_targets if plan else 0,
                 "labeler_classes": labeler[1] if labeler else 0}

        lo, hi, path = 0, cfg.n, out
        if ranks.world > 1:
            old = probe_cache(out) if out.exists() else None
            if out.exists() and old is None:
                raise FeddfError(f"{out} exists and is not a feddf cache; refusing to touch it: choose another --out")
            lo, hi = cfg.n * ranks.rank // ranks.world, cfg.n * (ranks.rank + 1) // ranks.world
            path = shard_path(out, ranks.rank, ranks.world)
            identity = {**identity, "shard_start": lo, "shard_index": ranks.rank, "shard_world": ranks.world}
            attrs = {**attrs, "shard_start": lo, "shard_index": ranks.rank, "shard_world": ranks.world}
        if filtering and ranks.world > 1:
            raise FeddfError("--min-confidence/--balance run in one process: drop torchrun (the kept set is a "
                             "sequential function of the draws)")
        images, fast_step = make_images(gen, plan, cfg.seed, trunc, device, dtype, group, res=res,
                                        compile_mode=compile_mode if fast else None)
        # torchrun: rank 0 swaps all staged --force shards at the end (defer_swap)
        open_writer = lambda a: CacheWriter(path, n=hi - lo, channels=gen.channels, resolution=res,  # noqa: E731
                                            attrs=a, identity=identity, compression=cfg.compression,
                                            chunk=cfg.chunk_images, force=force,
                                            defer_swap=ranks.world > 1, workers=resolved.workers, **sizes)
        order, stats = None, None
        if filtering:
            from feddf.generators.select import select_draws

            existing = path.exists() and not force and probe_cache(path) is not None
            writer = open_writer(attrs) if existing else None  # resumes (or refuses a different config)
            if writer is None or not writer.complete:
                order, stats = select_draws(images, labeler, n=cfg.n, k=labeler[1], res=res, batch=batch, device=device,
                                            min_confidence=cfg.min_confidence, balance=cfg.balance,
                                            oversample=cfg.oversample, progress=progress)
                if writer is None:
                    writer = open_writer({**attrs, "selection": stats})
        else:
            writer = open_writer(attrs)
        start_committed = writer.committed
        import scipy.special  # noqa: F401 - imported by the noise; not inside the timed loop
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            compile_status = "off"
            if not writer.complete:
                compile_status = generate(
                    images, writer, name=gen.name, device=device, lo=lo, seed=cfg.seed, plan=plan, res=res, batch=batch,
                    group=group, labeler=labeler, assign=assign, order=order, fast_step=fast_step,
                    progress=progress and not (ranks.world > 1 and ranks.rank))
            writer.finish()
        finally:
            writer.close()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0  # cpu: all threads of this process
        files = [path]
        if ranks.world > 1:
            ranks.barrier()  # every shard complete
            staged = [None] * ranks.world  # each rank's (staged shard, shard) when --force replaces an existing shard
            ranks.dist.all_gather_object(staged, [str(p) for p in writer.staged] if writer.staged else None)
            if ranks.rank == 0:
                write_virtual_cache(out, [shard_path(out, r, ranks.world) for r in range(ranks.world)], force=force,
                                    staged={Path(t): Path(s) for s, t in filter(None, staged)})
            ranks.barrier()
            files = [out] + [shard_path(out, r, ranks.world) for r in range(ranks.world)]
        made = (hi - lo) - start_committed
        if ranks.dist is not None:  # whole-job figures: images made by all ranks, slowest rank's wall time
            import torch.distributed as dist

            t = torch.tensor([float(made), wall], dtype=torch.float64)
            tot, slow = t.clone(), t.clone()
            dist.all_reduce(tot, op=dist.ReduceOp.SUM)
            dist.all_reduce(slow, op=dist.ReduceOp.MAX)
            made, wall = int(tot[0]), float(slow[1])
            start_committed = cfg.n - made
        size = sum(p.stat().st_size for p in files if p.exists())
        ok = True
        return {"out": str(out), "path": str(path), "n": cfg.n, "generated": made, "resumed_from": start_committed,
                "already_complete": made == 0, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "img_per_s": round(made / wall, 2)
                if wall > 0 and made else 0.0, "file_bytes": size, "bytes_per_image": round(size / cfg.n, 1),
                "rank": ranks.rank, "world": ranks.world, "device": str(device), "mode": cfg.mode,
                "dtype": dtype, "batch_size": batch, "compile": compile_status,
                "selection": {k: stats[k] for k in ("drawn", "kept", "kept_per_class")} if stats else None}
    finally:
        ranks.close(ok)


