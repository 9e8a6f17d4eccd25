"""Running a grid: every run is a real `feddf train` subprocess in its own folder under the sweep folder, N at a time.

    feddf sweep benchmarks/grids/fair.toml --out runs/fair --parallel 2

The sweep folder holds `grid.toml` (the grid file it runs, which marks the folder as a sweep's), `configs/<run>.json`
(each run's `feddf train` options, given to it as `--config`), `logs/<run>.log` (its output) and one run folder per
run. A run with all its rounds in metrics.jsonl is skipped; any other is started with `--resume`, so a run killed
mid-way continues after its last completed round (feddf train's checkpoint) and a new one starts from round 1.
`.feddf-sweep.lock` keeps a second sweep out of the folder while one runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from feddf.errors import FeddfError
from feddf.sweep.grid import Grid, RunSpec

MARK = "grid.toml"
LOCK = ".feddf-sweep.lock"


def status(folder: Path, rounds: int) -> tuple[str, int]:
    """('done' | 'partial' | 'new', rounds completed) of a run folder."""
    try:
        n = sum(1 for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip())
    except (OSError, ValueError):
        n = 0
    return ("done" if n >= rounds else "partial" if n or folder.exists() else "new"), n


def plan(grid: Grid, out: Path) -> list[dict]:
    """Each run with its folder and status (what --dry-run lists)."""
    rows = []
    for spec in grid.runs:
        rounds = grid.rounds(spec)
        state, done = status(out / spec.name, rounds)
        rows.append({"name": spec.name, "method": spec.method, "axes": spec.axes, "folder": str(out / spec.name),
                     "status": state, "rounds_done": done, "rounds": rounds, "options": spec.options})
    return rows


def check_sources(grid: Grid) -> None:
    """A transfer-set cache a run names must exist before any run starts (generate or import it first)."""
    for spec in grid.runs:
        o = spec.options
        if o.get("aggregator", "feddf") != "feddf":
            continue
        for key in ("distill_source", "cache"):
            v = o.get(key)
            if isinstance(v, str) and v.endswith(".h5") and not Path(v).is_file():
                raise FeddfError(f"{grid.path}: run {spec.name}: {key} {v} does not exist: create it first "
                                 "(`feddf gen ... --out` or `feddf cache import ... --out`, docs/sweeps.md)")


def claim(out: Path, grid: Grid):
    """Lock the sweep folder (a FolderLock) after checking it is empty, new or a sweep's; copy the grid into it."""
    from feddf.runfolder import FolderLock
    from feddf.utils import atomic_write_bytes

    if out.exists() and not out.is_dir():
        raise FeddfError(f"--out {out} is a file: choose a folder for the sweep")
    if out.is_dir() and any(out.iterdir()) and not (out / MARK).is_file():
        raise FeddfError(f"--out {out} is not empty and holds no sweep ({MARK} missing): refusing to write into it; "
                         "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out / LOCK, lambda pid: f"--out {out} is in use by another feddf sweep (pid {pid}): wait for "
                                              "it to finish or choose another --out")
    atomic_write_bytes(out / MARK, grid.path.read_bytes())
    return lock


def run_all(grid: Grid, out: Path, parallel: int, log: Callable[[str], None]) -> list[str]:
    """Run every unfinished run, `parallel` at a time (one thread each unless OMP_NUM_THREADS is set); the names of
    the runs that failed."""
    from feddf.utils import atomic_write_json

    todo = [s for s in grid.runs if status(out / s.name, grid.rounds(s))[0] != "done"]
    skipped = len(grid.runs) - len(todo)
    if skipped:
        log(f"{skipped} of {len(grid.runs)} runs already finished: skipped")
    (out / "configs").mkdir(exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    for spec in todo:
        atomic_write_json(out / "configs" / f"{spec.name}.json", spec.options)
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    running: dict = {}
    failed: list[str] = []
    queue = list(todo)
    while queue or running:
        while queue and len(running) < parallel:
            spec = queue.pop(0)
            proc, logf = _start(spec, out, env)
            running[proc] = (spec, time.monotonic(), logf)
            log(f"start {spec.name} ({len(todo) - len(queue)}/{len(todo)})")
        time.sleep(0.2)
        for proc in [p for p in running if p.poll() is not None]:
            spec, t0, logf = running.pop(proc)
            logf.close()
            if proc.returncode == 0:
                log(f"done  {spec.name} ({time.monotonic() - t0:.0f} s)")
            else:
                failed.append(spec.name)
                log(f"FAILED {spec.name} (exit {proc.returncode}): {_last_line(out / 'logs' / f'{spec.name}.log')}")
    return failed


def _start(spec: RunSpec, out: Path, env: dict):
    logf = open(out / "logs" / f"{spec.name}.log", "ab")  # appended: a resumed run's log follows the killed one's
    cmd = [sys.executable, "-m", "feddf", "train", "--config", str(out / "configs" / f"{spec.name}.json"),
           "--out", str(out / spec.name), "--resume", "--quiet"]
    logf.write(("$ feddf " + " ".join(cmd[3:]) + "\n").encode())
    logf.flush()
    return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env), logf


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"
