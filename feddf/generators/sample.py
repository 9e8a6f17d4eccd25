"""The `feddf gen` engine: sample a generator into a deterministic, resumable cache (one process or one torchrun rank).

    python -c "from feddf.generators.sample import GenConfig, run_gen; \
print(run_gen(GenConfig('dcgan', 64, out='/tmp/d.h5', random_weights=True), progress=False))"

Pipeline (the generator never waits on disk): the main thread makes noise (B, z) on the host and runs the forward
under torch.inference_mode (CPU: batch/thread-invariant kernels, base.py; CUDA: fixed index-aligned groups, optional
bf16/fp16 autocast + channels_last). On CPU a background thread then checks, resizes + quantises to uint8 and runs
the optional labeler, and a second one appends to the CacheWriter (which commits whole chunks), both overlapping the
next forward; on CUDA the resize, uint8 and labeler run on the GPU, the device->host copy is asynchronous (pinned
memory + event) and the background thread waits for it and appends. The queues between them are bounded
(QUEUE_DEPTH batches): memory stays flat.
Under torchrun (WORLD_SIZE > 1) rank r makes indices [n r / W, n (r+1) / W) into `<stem>.shard-r-of-W.h5` and rank 0
then writes `out` as HDF5 virtual datasets over the shards (feddf.cache.virtual.write_virtual_cache).
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from feddf.errors import FeddfError

QUEUE_DEPTH = 4
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
    from feddf.cache.writer import COMPRESSIONS
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


RENDEZVOUS_TIMEOUT_S = 600.0   # how long rank 0 waits for its peers to show up (FEDDF_RENDEZVOUS_TIMEOUT overrides)
BARRIER_TIMEOUT = 2 * 86400.0   # ranks may finish their shards hours apart; a dead peer still ends the wait


def _env_int(name: str, default: str | None = None) -> int:
    raw = os.environ.get(name, default)
    if raw is None:
        raise FeddfError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} is set but {name} is not: launch with "
                         "`torchrun --nproc-per-node K -m feddf gen ...`, or unset WORLD_SIZE for one process")
    try:
        return int(raw)
    except ValueError:
        raise FeddfError(f"{name}={raw!r} is not an integer: launch with torchrun or unset it") from None


class _Rank:
    """This process's place in a torchrun job (WORLD_SIZE/RANK/LOCAL_RANK); world 1 without torchrun.

    The gloo group is created with a bounded rendezvous (a peer that never comes ends the job with one line instead
    of a silent hang); the barriers between shard phases use their own, long timeout."""

    def __init__(self):
        self.world = _env_int("WORLD_SIZE", "1")
        if self.world < 1:
            raise FeddfError(f"WORLD_SIZE={self.world} must be >= 1: launch with torchrun or unset it")
        self.rank = _env_int("RANK") if self.world > 1 else _env_int("RANK", "0")
        self.local = _env_int("LOCAL_RANK", "0")
        if not 0 <= self.rank < self.world:
            raise FeddfError(f"RANK={self.rank} is outside [0, WORLD_SIZE={self.world}): launch with torchrun")
        self.dist = None
        self.owned = False  # True when this object created the process group (and so tears it down)
        if self.world > 1:
            import datetime

            import torch.distributed as dist

            for name in ("MASTER_ADDR", "MASTER_PORT"):
                if name not in os.environ:
                    raise FeddfError(f"WORLD_SIZE={self.world} is set but {name} is not: launch with torchrun")
            wait = float(os.environ.get("FEDDF_RENDEZVOUS_TIMEOUT", RENDEZVOUS_TIMEOUT_S))
            if not dist.is_initialized() and (self.rank or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"):
                self._wait_for_store(wait)  # a client of the rendezvous store: it must be up (no C++ retry spam)
            if not dist.is_initialized():  # gloo: only barriers + two tiny CPU all-reduces cross ranks (CPU or GPU runs)
                try:
                    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=wait))
                except Exception as e:  # noqa: BLE001 - a rendezvous failure is the launch's problem, not a bug
                    first = " ".join(str(e).split())[:200]
                    raise FeddfError(f"rank {self.rank}/{self.world}: the other torchrun processes did not join "
                                     f"within {wait:g} s at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
                                     f"({type(e).__name__}: {first}); check the launch or unset WORLD_SIZE") from None
                self.owned = True
            self.dist = dist

    def _wait_for_store(self, wait: float) -> None:
        """Until `wait` seconds pass: a plain TCP connect to MASTER_ADDR:MASTER_PORT (torchrun's store or rank 0's)."""
        import socket

        addr, port = os.environ["MASTER_ADDR"], _env_int("MASTER_PORT")
        deadline = time.monotonic() + wait
        while True:
            try:
                socket.create_connection((addr, port), timeout=max(0.1, min(1.0, deadline - time.monotonic()))).close()
                return
            except OSError:
                if time.monotonic() >= deadline:
                    raise FeddfError(f"rank {self.rank}/{self.world}: nothing listens at {addr}:{port} after {wait:g} s "
                                     "(rank 0 / the torchrun agent never came): check the launch or unset "
                                     "WORLD_SIZE") from None
                time.sleep(0.2)

    def barrier(self):
        if self.dist is None:
            return
        import datetime

        try:  # gloo's monitored barrier takes its own timeout (our group's is the short rendezvous one)
            if self.owned:
                self.dist.monitored_barrier(timeout=datetime.timedelta(seconds=BARRIER_TIMEOUT))
            else:  # a caller's group (any backend) keeps its own timeout
                self.dist.barrier()
        except RuntimeError as e:
            raise FeddfError(f"rank {self.rank}/{self.world}: a peer process failed or vanished "
                             f"({' '.join(str(e).split())[:200]})") from None

    def close(self, ok: bool = True):
        # A final barrier, then destroy the group we created while the interpreter is fully alive. Left to interpreter
        # exit, a gloo worker thread can still hold the last all-reduce's work (tensors with Python references);
        # freeing it during finalisation aborts the process ("terminate called without an active exception", exit
        # -6) after all the data was written. A caller's own process group is left alone.
        if self.dist is None or not self.dist.is_initialized():
            return
        if ok:
            self.dist.barrier()
        if self.owned:  # local for gloo (not collective), so a failing rank can tear down too
            self.dist.destroy_process_group()


def shard_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.stem}.shard-{rank}-of-{world}{out.suffix}")


def run_gen(cfg: GenConfig, *, force: bool = False, progress: bool = True) -> dict:
    """Generate (or resume, or find complete) the cache described by cfg; returns the summary dict."""
    import torch

    from feddf.cache.virtual import write_virtual_cache
    from feddf.cache.writer import CacheWriter, default_workers, probe_cache
    from feddf.generators import get_generator
    from feddf.generators.base import CUDA_GROUP, NOISE_SCHEME, make_batch_invariant
    from feddf.generators.fast import FAST_NOTE
    from feddf.generators.classes import assign, parse_classes
    from feddf.utils import resolve_device, to_jsonable, versions

    validate(cfg)
    ranks = _Rank()
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
                compile_status = _generate(
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


def make_images(gen, plan, seed: int, trunc, device, dtype: str, group: int, *, res: int | None = None,
                compile_mode: str | None = None):
    """(images, fast_step): images(idx) -> generator output (len(idx), C, H, W) in [-1, 1] on device for increasing
    global indices idx; in fast mode (compile_mode not None, fast.py) uint8 (len(idx), C, res, res) from one
    fixed-shape, possibly compiled, noise -> forward -> resize -> uint8 step per aligned group (fast_step: its
    GuardedCompile, whose .status says what ran; None in bitwise mode).

    With a forward group (CUDA, or generators whose outputs depend on the batch) the forward runs on whole,
    index-aligned groups (padded past the end, so shapes never vary) and the rows of idx are picked out: an image is
    a function of its index only, whichever other indices are drawn with it (the filter of select.py relies on it)."""
    import torch

    from feddf.generators.classes import assign

    cuda = device.type == "cuda"
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)

    def inputs(idx: np.ndarray):
        """(noise (B, z_dim), labels (B,) or None) on device for global indices idx: the same in both modes."""
        labels = assign(plan, idx, seed)[0] if plan else None
        z = torch.from_numpy(gen.noise(seed, idx, trunc)).to(device, non_blocking=cuda)
        y = torch.from_numpy(labels).to(device, non_blocking=cuda) if labels is not None else None
        return z, y

    def forward(idx: np.ndarray):
        z, y = inputs(idx)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            return gen.forward(z, y, trunc)

    fast_step = None
    if compile_mode is not None:
        from feddf.generators.fast import GuardedCompile, make_step

        fast_step = GuardedCompile(make_step(gen, device_type=device.type, truncation=trunc, resolution=res, amp=amp),
                                   compile_mode)
        run = lambda g: fast_step(*inputs(np.arange(g * group, (g + 1) * group)))  # noqa: E731
    else:
        run = lambda g: forward(np.arange(g * group, (g + 1) * group))  # noqa: E731

    def images(idx: np.ndarray):
        idx = np.asarray(idx, dtype=np.int64)
        if not group:
            return forward(idx)
        groups = np.unique(idx // group)
        x = run(groups[0]) if len(groups) == 1 else torch.cat([run(g) for g in groups])  # the usual step: no copy
        pos = np.searchsorted(groups, idx // group) * group + idx % group
        return x if len(pos) == len(x) and (pos == np.arange(len(x))).all() else x[torch.from_numpy(pos).to(device)]

    return images, fast_step


def _generate(images, writer, *, name, device, lo, seed, plan, res, batch, group, labeler, assign, order, progress,
              fast_step=None) -> str:
    """Indices lo + writer.committed .. lo + writer.n - 1, in order, through the bounded writer thread; with `order`
    (the kept draws of a filter) the committed-th .. last entries of order instead. `images` and `fast_step` come from
    make_images; returns what the fast step ran as ("off" in bitwise mode)."""
    import torch
    from tqdm import tqdm

    from feddf.audit.labeler import predict
    from feddf.generators.base import (check_batch_finite, finite_flag, invariant_kernels, to_uint8,
                                       to_uint8_checked)

    first, end = writer.committed, writer.n
    cuda = device.type == "cuda"
    q: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
    error: list[BaseException] = []
    bar = tqdm(total=writer.n, initial=writer.committed, unit="img", disable=not progress, dynamic_ncols=True,
               smoothing=0.1, desc=Path(writer.path).name)

    def finish_batch(x):
        """float (B, C, H, W) in [-1, 1] (or fast mode's uint8) -> (uint8 (B, C, R, R), labeler pred, conf)."""
        u8 = x if x.dtype == torch.uint8 else to_uint8(x, res)
        pred = conf = None
        if labeler is not None:
            pred, conf = predict(labeler[0], u8)  # the audit's own labeler rule (feddf.audit.labeler)
        return u8, pred, conf

    # CUDA: the main thread quantises on the device and the writer thread waits for the async copy, then writes.
    # CPU: a third thread between them does the finite check, resize/uint8 and the labeler (torch/numpy release the
    # GIL), so the forward, the quantisation and the writes overlap instead of the writer thread doing the last two
    # (a near-free generator with gzip and one encoder: 57-61 000 -> 72 500 img/s; uncompressed unchanged at ~95 000,
    # where the writer thread's own HDF5 calls are the limit; docs/benchmarks.md). FIFO queues: order and bytes are
    # unchanged.
    q_write: queue.Queue = q if cuda else queue.Queue(maxsize=QUEUE_DEPTH)

    def prepare_loop():
        with torch.inference_mode():
            while True:
                item = q.get()
                if item is None:
                    q_write.put(None)
                    return
                if error:
                    continue  # keep draining so the producer never blocks on a dead consumer
                try:
                    _, x, labels, targets, _, _, _, span = item
                    u8, finite = to_uint8_checked(x, res)  # the uint8 step and the finite check in one pass
                    check_batch_finite(finite, name, *span)  # before anything of the batch is written
                    u8, pred, conf = finish_batch(u8)
                    q_write.put((None, u8, labels, targets, pred, conf, None, span))
                except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                    error.append(e)

    def write_loop():
        with torch.inference_mode():
            while True:
                item = q_write.get()
                if item is None:
                    return
                if error:
                    continue
                try:
                    event, x, labels, targets, pred, conf, finite, span = item
                    if event is not None:
                        event.synchronize()  # the async device->host copy has landed (images and finite flag)
                        check_batch_finite(finite, name, *span)  # before anything of the batch is written
                    writer.append(x.numpy(), labels, targets, pred, conf)
                    bar.update(len(labels))
                except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                    error.append(e)

    threads = [threading.Thread(target=write_loop, name="feddf-cache-writer", daemon=True)]
    if not cuda:
        threads.append(threading.Thread(target=prepare_loop, name="feddf-quantise", daemon=True))
    for t in threads:
        t.start()

    if fast_step is not None:
        from feddf.generators.fast import fast_kernels

        kernels = fast_kernels(device.type)
    else:
        kernels = invariant_kernels(device.type)
    # the kernel flags are process-wide: they must hold until the writer thread (which runs the labeler) is done
    with torch.inference_mode(), kernels:
        try:
            s, k = first, 0
            while s < end:
                if error:
                    break
                e = min(s + batch, end)
                if fast_step is not None and order is None:  # one fixed-shape call per step: the aligned group of s
                    e = min((lo + s) // group * group + group - lo, end)
                idx = order[s:e] if order is not None else np.arange(lo + s, lo + e)
                x = images(idx)
                labels, targets = assign(plan, idx, seed) if plan else (np.full(e - s, -1, np.int64), None)
                span = (k, lo + s, lo + e)  # (batch number in this run, first image, end)
                if cuda:
                    finite = torch.empty((), dtype=torch.bool, pin_memory=True)
                    finite.copy_(finite_flag(x), non_blocking=True)
                    u8, pred, conf = finish_batch(x)
                    host = torch.empty(u8.shape, dtype=torch.uint8, pin_memory=True)
                    host.copy_(u8, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                    q.put((event, host, labels, targets, pred, conf, finite, span))
                else:
                    q.put((None, x, labels, targets, None, None, None, span))
                s, k = e, k + 1
        finally:
            q.put(None)
            for t in threads[::-1]:  # the quantiser passes the end on to the writer
                t.join()
            bar.close()
    if error:
        raise error[0]
    return fast_step.status if fast_step is not None else "off"
