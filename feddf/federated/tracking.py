"""Experiment tracking (`feddf train --log tensorboard|csv|wandb`): every round's metrics as scalars for the tools
researchers watch runs with, written next to the run's metrics.jsonl.

    python -c "from feddf.federated.tracking import scalars; \
print(scalars({'round': 1, 'acc': {'cnn': {'fedavg': 0.5, 'distilled': 0.6}}, 'upload_bytes': {'0': 10, '1': 5}}))"

- tensorboard: event files in `<run>/tensorboard/` (torch.utils.tensorboard; `tensorboard --logdir runs`), one step per
  round, plus each round's validation curve of the distillation as `val_curve/<arch>` over the run's distillation
  steps ((round - 1) * --distill-steps + step), so the rounds' curves join into one.
- csv: `<run>/metrics.csv`, one row per round, one column per scalar; rewritten whole (atomically) after each round.
- wandb: an offline run in `<run>/wandb/` (`wandb sync` uploads it), when the optional `wandb` package is installed.

Scalars (tags; `/` separates levels): `acc/<arch>/fedavg|distilled`, `ensemble_acc`, `val_acc/<arch>/fedavg|distilled`,
`distill_steps/<arch>`, `best_step/<arch>`, `teachers`, `seconds/client`, `seconds/distill`, `seconds/server/<phase>`
(feddf.federated.fusion's phases), `bytes/upload`, `bytes/download` (all clients of the round). A resumed run continues
the files: TensorBoard drops the events after the resumed round (purge_step), the CSV is rewritten from all rounds.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

from feddf.errors import FeddfError

TRACKERS = {"tensorboard": "tensorboard", "csv": None, "wandb": "wandb"}  # name -> the package it needs


def check_trackers(names: list[str] | None) -> None:
    """Known names whose package is installed; one line otherwise (before anything is written)."""
    for name in names or []:
        if name not in TRACKERS:
            raise FeddfError(f"--log {name!r}: choose tensorboard, csv or wandb (repeat --log for several)")
        pkg = TRACKERS[name]
        if pkg and importlib.util.find_spec(pkg) is None:
            raise FeddfError(f"--log {name}: the `{pkg}` package is not installed: pip install '{pkg}' (or "
                             f"'feddf[{pkg}]'), or leave out --log {name}")
    if names and len(set(names)) != len(names):
        raise FeddfError(f"--log {','.join(names)}: give each tracker once")


def scalars(row: dict) -> dict[str, float]:
    """A metrics.jsonl row as flat {tag: number} (lists such as `selected` and `val_history` left out)."""
    out: dict[str, float] = {}

    def walk(prefix: str, v) -> None:
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, (int, float)):
            out[prefix] = float(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}/{k}", x)

    for key in ("acc", "ensemble_acc", "val_acc", "distill_steps", "best_step", "teachers"):
        walk(key, row.get(key))
    for key in ("client", "distill"):
        walk(f"seconds/{key}", row.get(f"{key}_seconds"))
    walk("seconds/server", row.get("server_seconds"))
    for key in ("upload", "download"):
        per_client = row.get(f"{key}_bytes")
        if isinstance(per_client, dict):
            out[f"bytes/{key}"] = float(sum(per_client.values()))
    return out


class Trackers:
    """The run's trackers; `round(row, rows)` after each committed round, `close()` at the end."""

    def __init__(self, names: list[str], out: Path, config: dict, start: int):
        self.out, self.writers = out, []
        self.distill_steps = int(config.get("distill_steps") or 0)
        for name in names:
            self.writers.append(getattr(self, f"_{name}")(config, start))

    def _tensorboard(self, config: dict, start: int) -> Callable:
        from torch.utils.tensorboard import SummaryWriter

        w = SummaryWriter(log_dir=str(self.out / "tensorboard"), purge_step=start + 1 if start else None)

        def write(row: dict, rows: list, tags: dict) -> None:
            r = int(row["round"])
            for tag, v in tags.items():
                w.add_scalar(tag, v, r)
            for arch, hist in (row.get("val_history") or {}).items():
                for step, val in hist:
                    w.add_scalar(f"val_curve/{arch}", val, (r - 1) * self.distill_steps + int(step))
            w.flush()

        write.close = w.close
        return write

    def _csv(self, config: dict, start: int) -> Callable:
        import csv
        import io

        from feddf.utils import atomic_write_bytes

        def write(row: dict, rows: list, tags: dict) -> None:
            table = [{"round": r["round"], **scalars(r)} for r in rows]
            cols = ["round", *sorted({k for t in table for k in t} - {"round"})]
            buf = io.StringIO()
            csv_out = csv.DictWriter(buf, cols, lineterminator="\n")
            csv_out.writeheader()
            csv_out.writerows(table)
            atomic_write_bytes(self.out / "metrics.csv", buf.getvalue().encode())

        write.close = lambda: None
        return write

    def _wandb(self, config: dict, start: int) -> Callable:
        import hashlib

        import wandb

        run_id = "feddf-" + hashlib.sha256(str(self.out.resolve()).encode()).hexdigest()[:12]  # a resume continues it
        run = wandb.init(mode="offline", dir=str(self.out), project="feddf", name=self.out.name, config=config,
                         id=run_id, resume="allow")

        def write(row: dict, rows: list, tags: dict) -> None:
            run.log(tags, step=int(row["round"]))

        write.close = run.finish
        return write

    def round(self, row: dict, rows: list) -> None:
        tags = scalars(row)
        for w in self.writers:
            w(row, rows, tags)

    def close(self) -> None:
        for w in self.writers:
            w.close()


def open_trackers(names: list[str] | None, out: Path, config: dict, start: int) -> Trackers:
    return Trackers(list(names or []), out, config, start)
