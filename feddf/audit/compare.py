"""Compare `feddf train` runs: accuracy-vs-round curves, best/final accuracy, rounds to a target accuracy (the FedDF
paper's Table 1 metric), distillation steps, wall time, client precision and the MB uploaded per round.

    feddf compare runs/fedavg runs/feddf-gan --target-acc 0.8 --out reports/fedavg-vs-feddf

A run's accuracy for an architecture in a round is the accuracy of the server model that round ends with: the
distilled model when the aggregator distilled (`acc[arch]["distilled"]` not null), else the FedAvg model.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path

from feddf.errors import FeddfError


@dataclass
class Run:
    path: Path
    name: str
    config: dict
    records: list[dict]          # metrics.jsonl, one dict per round, sorted by round
    skipped_lines: int = 0       # a truncated last line (run killed mid-write) is skipped, not fatal


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read config.json and metrics.jsonl of a run folder; FeddfError (one line) when it is not one."""
    p = Path(path)
    hint = "pass a folder written by `feddf train` (with config.json and metrics.jsonl)"
    if not p.is_dir():
        raise FeddfError(f"run folder {str(p)!r} does not exist or is not a folder: {hint}")
    cfg_file, met_file = p / "config.json", p / "metrics.jsonl"
    if not cfg_file.is_file() or not met_file.is_file():
        missing = ", ".join(f.name for f in (cfg_file, met_file) if not f.is_file())
        raise FeddfError(f"{str(p)!r} is not a run folder ({missing} missing): {hint}")
    try:
        config = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise FeddfError(f"{cfg_file} is not valid JSON ({e}): the run folder is damaged") from None
    if not isinstance(config, dict):
        raise FeddfError(f"{cfg_file} does not hold a JSON object: {hint}")
    try:
        lines = met_file.read_text().splitlines()
    except ValueError as e:  # not UTF-8
        raise FeddfError(f"{met_file} is not text ({type(e).__name__}): the run folder is damaged") from None
    records, skipped, seen = [], 0, {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:      # the writer was killed mid-line: keep the complete rounds
                skipped += 1
                continue
            raise FeddfError(f"{met_file}:{i + 1} is not valid JSON: the run folder is damaged") from None
        if not isinstance(rec, dict) or "round" not in rec or not isinstance(rec.get("acc"), dict):
            raise FeddfError(f"{met_file}:{i + 1} lacks 'round' or 'acc': not a feddf metrics file ({hint})")
        bad = _bad_field(rec)
        if not bad and rec["round"] in seen:
            bad = f"round {rec['round']} is recorded twice (first on line {seen[rec['round']]})"
        if bad:
            raise FeddfError(f"{met_file}:{i + 1}: {bad}: the run folder is damaged ({hint})")
        seen[rec["round"]] = i + 1
        records.append(rec)
    if not records:
        raise FeddfError(f"{met_file} has no completed round yet: let the run finish at least one round")
    records.sort(key=lambda r: r["round"])
    return Run(p, name or p.name, config, records, skipped)


def _number(v, none_ok: bool = True, lo: float = 0.0, hi: float = math.inf) -> bool:
    """None (when allowed) or a finite int/float in [lo, hi]: json.loads accepts Infinity and NaN."""
    if v is None:
        return none_ok
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi


def _bad_field(rec: dict) -> str:
    """'' when a metrics record has the types and ranges compare reads, else what is wrong (one phrase)."""
    if not isinstance(rec["round"], int) or isinstance(rec["round"], bool) or rec["round"] < 1:
        return f"round {rec['round']!r} is not a round number (an integer >= 1)"
    for arch, entry in rec["acc"].items():
        vals = entry.values() if isinstance(entry, dict) else [entry]
        if not all(_number(v, hi=1.0) for v in vals):
            return f"acc of {arch} {entry!r} is not an accuracy (a number in [0, 1])"
    if not _number(rec.get("ensemble_acc"), hi=1.0):
        return f"ensemble_acc {rec.get('ensemble_acc')!r} is not an accuracy (a number in [0, 1])"
    for key in ("client_seconds", "distill_seconds"):
        if not _number(rec.get(key)):
            return f"{key} {rec.get(key)!r} is not a duration (a finite number >= 0)"
    for key in ("distill_steps", "upload_bytes", "download_bytes"):
        per = rec.get(key)
        if per is not None and not (isinstance(per, dict) and all(_number(v) for v in per.values())):
            return f"{key} {per!r} is not a mapping to finite counts >= 0"
    return ""


def server_acc(entry) -> float | None:
    """Accuracy of the model a round ends with: distilled when present, else FedAvg (entry may be a bare float)."""
    if isinstance(entry, (int, float)):
        return float(entry)
    if not isinstance(entry, dict):
        return None
    v = entry.get("distilled")
    if v is None:
        v = entry.get("fedavg")
    return None if v is None else float(v)


def rounds_to_target(rounds: list[int], acc: list[float], target: float) -> int | None:
    """The first round whose accuracy reaches `target` (None: never) — the paper's Table 1 metric."""
    for r, a in zip(rounds, acc):
        if a is not None and a >= target:
            return int(r)
    return None


def archs_of(run: Run) -> list[str]:
    archs = list(run.config.get("archs") or [])
    for rec in run.records:
        archs += [a for a in rec["acc"] if a not in archs]
    return archs


def series(run: Run, arch: str) -> dict:
    """Per-round curves of one architecture: server accuracy, FedAvg-before-distillation accuracy, steps, seconds."""
    rounds, acc, fedavg, steps, secs = [], [], [], 0, 0.0
    for rec in run.records:
        if arch not in rec["acc"]:
            continue
        a = server_acc(rec["acc"][arch])
        if a is None:
            continue
        rounds.append(int(rec["round"]))
        acc.append(a)
        e = rec["acc"][arch]
        fedavg.append(float(e["fedavg"]) if isinstance(e, dict) and e.get("fedavg") is not None else None)
        steps += int((rec.get("distill_steps") or {}).get(arch) or 0)
    for rec in run.records:   # wall time is per round (all architectures together)
        secs += float(rec.get("client_seconds") or 0.0) + float(rec.get("distill_seconds") or 0.0)
    return {"rounds": rounds, "acc": acc, "fedavg": fedavg, "distill_steps": steps, "seconds": secs}


def mb_per_round(run: Run, key: str) -> float | None:
    """Mean over rounds of the bytes all clients uploaded (key upload_bytes) or downloaded, in MB (10^6 bytes);
    None for runs recorded before metrics.jsonl had byte counts."""
    per = [sum((r.get(key) or {}).values()) / 1e6 for r in run.records if key in r]
    return sum(per) / len(per) if per else None


def summarize(runs: list[Run], target: float | None) -> list[dict]:
    """One table row per (run, architecture)."""
    rows = []
    for run in runs:
        ens = [r.get("ensemble_acc") for r in run.records if isinstance(r.get("ensemble_acc"), (int, float))]
        for arch in archs_of(run):
            s = series(run, arch)
            if not s["acc"]:
                continue
            best_i = max(range(len(s["acc"])), key=lambda i: s["acc"][i])
            rows.append({
                "run": run.name, "path": str(run.path), "arch": arch,
                "dataset": run.config.get("dataset"), "aggregator": run.config.get("aggregator"),
                "distill_source": distill_source(run.config), "rounds_run": len(s["rounds"]),
                "best_acc": s["acc"][best_i], "best_round": s["rounds"][best_i], "final_acc": s["acc"][-1],
                "final_round": s["rounds"][-1],
                "rounds_to_target": rounds_to_target(s["rounds"], s["acc"], target) if target is not None else None,
                "distill_steps": s["distill_steps"], "wall_seconds": s["seconds"],
                "client_precision": run.config.get("client_precision", "fp32"),
                "upload_mb_per_round": mb_per_round(run, "upload_bytes"),
                "download_mb_per_round": mb_per_round(run, "download_bytes"),
                "best_ensemble_acc": max(ens) if ens else None, "incomplete_lines_skipped": run.skipped_lines})
    return rows


def run_figures(run: Run, target: float | None, rounds: int | None = None, arch: str | None = None) -> dict:
    """Figures of one architecture (the first when None) over the first `rounds` rounds of a run (all when None), so
    runs of different lengths compare alike: final/best test accuracy, the mean over all rounds and the last 3, the
    server's validation accuracy likewise (FedDF rounds only), rounds to `target`, distillation steps, seconds and
    upload MB per round."""
    import statistics

    rows = run.records[:rounds]
    arch = arch or next(iter(rows[-1]["acc"]))
    accs = [server_acc(r["acc"][arch]) for r in rows]
    steps = [r["distill_steps"].get(arch, 0) for r in rows if r.get("distill_steps")]
    vals = [r["val_acc"][arch]["distilled"] for r in rows if r.get("val_acc")]  # FedAvg rounds never validate
    upload = [sum((r.get("upload_bytes") or {}).values()) / 1e6 for r in rows]
    return {"final": accs[-1], "best": max(accs), "rounds": len(rows),
            "rounds_to_target": rounds_to_target([r["round"] for r in rows], accs, target) if target else None,
            "mean_all": statistics.mean(accs), "mean_last3": statistics.mean(accs[-3:]),
            "val_all": statistics.mean(vals) if vals else None,
            "val_last3": statistics.mean(vals[-3:]) if vals else None,
            "distill_steps": statistics.mean(steps) if steps else 0.0,
            "local_s": statistics.mean(r["client_seconds"] for r in rows),
            "distill_s": statistics.mean(r["distill_seconds"] for r in rows), "upload_mb": statistics.mean(upload)}


def mean_std(xs: list[float | None], digits: int = 3) -> str:
    """'0.812 ± 0.004' over the numbers of xs (None skipped), one number alone, '—' for none."""
    import statistics

    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def distill_source(config: dict) -> str | None:
    """The distillation source of a run, or None when its aggregator does not distill (config keeps the default)."""
    return config.get("distill_source") if config.get("aggregator", "feddf") == "feddf" else None


def compare_runs(paths: list[str | Path], target: float | None) -> tuple[dict, dict[str, bytes]]:
    """(report dict with every number, {file name: PNG}) for the runs at `paths`."""
    from feddf.audit import plots
    from feddf.audit.sources import unique_names
    from feddf.utils import versions

    if not paths:
        raise FeddfError("no RUN_DIR given: pass one or more `feddf train` run folders")
    if target is not None and not 0.0 < target <= 1.0:
        raise FeddfError(f"--target-acc {target} must be a fraction in (0, 1], e.g. 0.8 for 80%")
    names = unique_names([Path(p).name or str(p) for p in paths])
    runs = [load_run(p, n) for p, n in zip(paths, names)]
    rows = summarize(runs, target)
    curves = []
    for run in runs:
        label = f"{run.name} ({run.config.get('aggregator', '?')}"
        label += f", {distill_source(run.config)})" if distill_source(run.config) else ")"
        for arch in archs_of(run):
            s = series(run, arch)
            if s["acc"]:
                curves.append({"run": run.name, "arch": arch, "label": label, "rounds": s["rounds"],
                               "acc": s["acc"], "fedavg": s["fedavg"]})
    figures = {"accuracy.png": plots.accuracy_curves(curves, target, "test accuracy vs round")}
    report = {"command": "compare", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "target_acc": target, "versions": versions(), "rows": rows, "curves": curves,
              "runs": [{"name": r.name, "path": str(r.path), "config": r.config, "rounds": len(r.records)}
                       for r in runs],
              "figures": {"accuracy": "figures/accuracy.png"}}
    return report, figures
