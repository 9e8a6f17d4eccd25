"""The sampling loop of `feddf gen`: global indices -> generator forward -> uint8 (+ labeler) -> CacheWriter.append,
in index order, with the generator never waiting on disk.

    .venv/bin/python -m pytest -q tests/test_gen_resume.py

The main thread makes noise (B, z) on the host and runs the forward under torch.inference_mode (CPU:
batch/thread-invariant kernels, base.py; CUDA: fixed index-aligned groups, optional bf16/fp16 autocast +
channels_last). On CPU a background thread then checks, resizes + quantises to uint8 and runs the optional labeler,
and a second one appends to the CacheWriter (which commits whole chunks), both overlapping the next forward; on CUDA
the resize, uint8 and labeler run on the GPU, the device->host copy is asynchronous (pinned memory + event) and the
background thread waits for it and appends. The queues between them are bounded (QUEUE_DEPTH batches): memory stays
flat. What to sample (the generator, classes, the range of indices, the resume point) is decided by sample.py.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np

QUEUE_DEPTH = 4


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


def generate(images, writer, *, name, device, lo, seed, plan, res, batch, group, labeler, assign, order, progress,
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
