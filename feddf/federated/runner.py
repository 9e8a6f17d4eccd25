"""One federated training run: rounds of local training, FedAvg per architecture and (FedDF) ensemble distillation,
with a run folder that can be resumed after any crash.

    python -c "from feddf.federated.config import TrainConfig; from feddf.federated.runner import run; \
run(TrainConfig(train_limit=600, clients=4, rounds=1, local_epochs=1, arch='cnn', distill_source='noise', \
distill_steps=20, eval_every=10, test_limit=500, out='/tmp/feddf-demo'))"

Run folder (docs/CONTRACTS.md): config.json (resolved config, versions, data/cache hashes), partition.json (class
histogram of every client and of the server's validation split), metrics.jsonl (one line per round), models/<arch>.pt
(save_classifier), checkpoint.pt (everything needed to continue). All of them are written atomically; a round only
counts once checkpoint.pt says so, so a kill -9 loses at most the round in progress. Every random choice of round r
(client sampling, local shuffling/augmentation, the distillation stream) is seeded from (seed, r, ...), so `--resume`
continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from feddf.errors import FeddfError
from feddf.federated.aggregate import get_aggregator
from feddf.federated.config import TrainConfig
from feddf.federated.engines import train_clients
from feddf.federated.fusion import fuse, participants, sample_clients
from feddf.federated.setup import (Task, load_task, print_partition, print_start, print_summary, same_run,
                                   teacher_warning)
from feddf.federated.tracking import open_trackers

CHECKPOINT_VERSION = 1




class Progress:
    """A tqdm bar over rounds whose postfix shows the phase (local k/K, distill step + val acc)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="rounds", unit="round", file=sys.stderr,
                        disable=not enabled, dynamic_ncols=True, mininterval=0.5)
        self._last = 0.0

    def phase(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last > 0.5:
            self.bar.set_postfix_str(text, refresh=True)
            self._last = now

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def run(cfg: TrainConfig, log: Callable[[str], None] = print, on_round: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) the federated training described by cfg; returns the final summary dict. on_round(row) is
    called with each round's metrics row once the round is committed (checkpoint.pt and metrics.jsonl written)."""
    from feddf.federated.teachers import resolve_precision
    from feddf.runfolder import check_folder, claim, legacy_run
    from feddf.utils import resolve_device

    cfg = cfg.resolved()
    if cfg.node_local_data():
        raise FeddfError(f"--server-data {cfg.server_data}: node-local data is for `feddf flower local|server`, "
                         f"where every SuperNode brings its own data=; feddf train splits --dataset among its clients")
    device = resolve_device(cfg.device)
    cfg = dataclasses.replace(cfg, teacher_precision=resolve_precision(cfg.teacher_precision, device))
    out = Path(cfg.out)
    folder_rules = dict(kind="train", settings=run_settings(cfg), legacy=legacy_run("aggregator"))
    check_folder(out, **folder_rules)
    task = load_task(cfg, log)  # every data check before the folder exists: a refused or killed load leaves none
    folder = claim(out, **folder_rules)
    try:
        return _run(cfg, device, folder, task, log, on_round)
    finally:
        folder.release()


def run_settings(cfg: TrainConfig) -> dict:
    """What identifies a run folder's run: the resolved config without the settings --resume may change."""
    from feddf.federated.setup import LATE_DEFAULTS, RESUMABLE

    return {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in RESUMABLE and not (k in LATE_DEFAULTS and v == LATE_DEFAULTS[k])}


def _run(cfg: TrainConfig, device, folder, task: Task, log: Callable[[str], None],
         on_round=None) -> dict:
    """The run itself, in the claimed run folder (feddf.runfolder.RunFolder)."""
    out = folder.path
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not cfg.resume:
        raise FeddfError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    ckpt = load_checkpoint(ckpt_path, cfg) if cfg.resume and ckpt_path.exists() else None
    folder.mark()
    (out / "models").mkdir(exist_ok=True)
    if ckpt is None:
        _write_json(out / "partition.json", task.partition_record())
        _write_json(out / "config.json", task.config_record())
    print_start(task, out, log)
    print_partition(task, log)

    agg = get_aggregator(cfg.aggregator, weighting=cfg.weighting, server_momentum=cfg.server_momentum)
    server = {a: task.initial_state(a) for a in cfg.archs}
    start, rows = restore(ckpt, cfg, out, task, agg, server, log)

    bar = Progress(cfg.rounds, start, cfg.progress)
    trackers = open_trackers(cfg.trackers, out, dataclasses.asdict(cfg), start)
    warned = teacher_warning(cfg, participants(cfg), "") is not None  # print_start said it already
    try:
        for r in range(start + 1, cfg.rounds + 1):
            row = _round(r, cfg, task, agg, server, device, bar)
            kept = len(row["selected"]) - len(row.get("dropped", []))  # --drop-worst may leave one teacher
            late = None if warned else teacher_warning(cfg, kept, f"round {r} after --drop-worst")
            if late:
                warned = True
                log(late)
            rows.append(row)
            _write_outputs(out, task, server, rows, checkpoint=checkpoint(r, cfg, server, agg, rows, task.source))
            trackers.round(row, rows)
            if on_round is not None:
                on_round(row)
            bar.advance()
    finally:
        bar.close()
        trackers.close()
    summary = {"out": str(out), "rounds": len(rows), "final": rows[-1] if rows else None}
    print_summary(rows, cfg.archs, log)
    return summary


def _round(r: int, cfg: TrainConfig, task: Task, agg, server: dict, device, bar: Progress) -> dict:
    selected = sample_clients(cfg, r)

    # ---- local training (engines.py over fusion.client_step, shared with the Flower client app) --------------
    t0 = time.perf_counter()
    updates = train_clients(cfg, task, r, selected, server, device, bar.phase)  # ClientUpdates sorted by client id
    client_seconds = time.perf_counter() - t0

    # ---- the server step (fusion.py, shared with the Flower strategy) ----------------------------------------
    t1 = time.perf_counter()
    fused = fuse(r, cfg, task, agg, server, updates, device, phase=lambda text, force=False: bar.phase(text, force))
    server.update(fused.server)
    distill_seconds = time.perf_counter() - t1
    return {"round": r, **fused.metrics, "client_seconds": round(client_seconds, 3),
            "distill_seconds": round(distill_seconds, 3), "server_seconds": fused.seconds, "selected": selected}


# ---- run folder (shared with the Flower ServerApp, feddf/flower/server_app.py) --------------------------------
def checkpoint(r: int, cfg: TrainConfig, server: dict, agg, rows: list[dict], source=None) -> dict:
    """checkpoint.pt after round r: everything --resume needs to continue as the uninterrupted run would, the
    state of a learning transfer source (the synthesiser's generator, pool.SynthSource) included."""
    out = {"version": CHECKPOINT_VERSION, "round": r, "server": server, "aggregator": agg.state_dict(),
           "metrics": rows, "config": dataclasses.asdict(cfg), "rng": {"torch": torch.get_rng_state()}}
    if hasattr(source, "state_dict"):
        out["source"] = source.state_dict()
    return out


def restore(ckpt: dict | None, cfg: TrainConfig, out: Path, task: Task, agg, server: dict,
            log: Callable[[str], None]) -> tuple[int, list[dict]]:
    """(last finished round, its metrics rows) of a checkpoint (0, [] without one), with `server` (arch -> state,
    updated in place), the aggregator and torch's RNG put back, and the run folder's models and metrics.jsonl
    rewritten to that round (undoing whatever a killed round wrote after its checkpoint)."""
    if ckpt is None:
        return 0, []
    start, rows = int(ckpt["round"]), list(ckpt["metrics"])
    server.update({a: ckpt["server"][a] for a in cfg.archs})
    agg.load_state_dict(ckpt["aggregator"])
    if hasattr(task.source, "load_state_dict"):
        if "source" not in ckpt:
            raise FeddfError(f"{out / 'checkpoint.pt'} holds no state of the transfer source "
                             f"{cfg.distill_source}: the run folder is damaged; start a new --out")
        task.source.load_state_dict(ckpt["source"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    _write_outputs(out, task, server, rows)
    log(f"resuming {out} after round {start}/{cfg.rounds}")
    return start, rows


def _write_json(path: Path, obj) -> None:
    from feddf.utils import atomic_write_json

    atomic_write_json(path, obj)


def _write_outputs(out: Path, task: Task, server: dict, rows: list[dict], checkpoint: dict | None = None) -> None:
    """models/<arch>.pt, then checkpoint.pt (the commit point), then metrics.jsonl; each file atomically."""
    from feddf.utils import atomic_torch_save, atomic_write_bytes

    for a, state in server.items():
        task.save_model(out / "models" / f"{a}.pt", a, state)
    if checkpoint is not None:
        atomic_torch_save(checkpoint, out / "checkpoint.pt")
    atomic_write_bytes(out / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def load_checkpoint(path: Path, cfg: TrainConfig) -> dict:
    from feddf.utils import load_torch_file

    ckpt = load_torch_file(path, "checkpoint", "the run folder is damaged; start a new --out")
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise FeddfError(f"{path} is not a feddf train checkpoint (version {CHECKPOINT_VERSION})")
    if (not {"round", "server", "aggregator", "metrics", "config", "rng"} <= set(ckpt)
            or not isinstance(ckpt["config"], dict) or not isinstance(ckpt["round"], int)
            or not isinstance(ckpt["metrics"], list) or not isinstance(ckpt["server"], dict)):
        raise FeddfError(f"{path} is damaged (missing or mistyped entries): start a new --out")
    diff = same_run(ckpt["config"], dataclasses.asdict(cfg))
    if diff:
        raise FeddfError(f"--resume with different settings than {path.parent} was started with ({diff}): "
                         f"use the same options (only --rounds, --device, --prefetch, --client-engine, --log and "
                         f"progress may change)")
    if int(ckpt["round"]) > cfg.rounds:
        raise FeddfError(f"{path.parent} already completed {ckpt['round']} rounds, more than --rounds {cfg.rounds}")
    return ckpt
