"""The table of a sweep: `feddf compare`'s figures of every finished run, mean ± std over the `seed` axis.

    python -c "from feddf.sweep.grid import load_grid; from feddf.sweep.table import tabulate; \
print(tabulate(load_grid('runs/fair/grid.toml'), __import__('pathlib').Path('runs/fair'), 0.8)[1])"

One row per method, value of every other axis and architecture; each run's figures are feddf.audit.compare's
(`run_figures` over the run's configured rounds: final and best test accuracy, the mean over all rounds and over the
last 3, rounds to the target accuracy, upload MB and seconds per round).
"""
from __future__ import annotations

import statistics
from pathlib import Path

from feddf.sweep.grid import Grid

# (figure of compare.run_figures, column title)
COLUMNS = [("final", "final acc"), ("best", "best acc"), ("mean_all", "test all rounds"),
           ("mean_last3", "test last 3"), ("upload_mb", "upload MB/round"), ("seconds", "s/round")]


def _stats(values: list) -> dict:
    xs = [v for v in values if v is not None]
    return {"mean": statistics.mean(xs) if xs else None, "std": statistics.stdev(xs) if len(xs) > 1 else None,
            "values": values}


def tabulate(grid: Grid, out: Path, target: float | None) -> tuple[dict, str]:
    """(sweep.json's report, sweep.md's text) of the finished runs of `grid` in `out`."""
    from feddf.audit.compare import archs_of, load_run, mean_std, run_figures
    from feddf.sweep.run import status

    runs, missing, groups = [], [], {}
    for spec in grid.runs:
        folder = out / spec.name
        if status(folder, grid.rounds(spec))[0] != "done":
            missing.append(spec.name)
            continue
        run = load_run(folder, spec.name)
        for arch in archs_of(run):
            fig = run_figures(run, target, grid.rounds(spec), arch)
            fig["seconds"] = fig["local_s"] + fig["distill_s"]
            rec = {"name": spec.name, "method": spec.method, "label": spec.label, "axes": spec.axes, "arch": arch,
                   **fig}
            runs.append(rec)
            rest = tuple((k, repr(v)) for k, v in spec.axes.items() if k != "seed")
            groups.setdefault((spec.method, rest, arch), []).append(rec)
    rows = []
    for (method, _, arch), recs in groups.items():
        first = recs[0]
        row = {"method": method, "label": first["label"], "arch": arch,
               "axes": {k: v for k, v in first["axes"].items() if k != "seed"},
               "seeds": [r["axes"].get("seed") for r in recs], "runs": [r["name"] for r in recs],
               "rounds_to_target": [r["rounds_to_target"] for r in recs]}
        row.update({k: _stats([r[k] for r in recs]) for k, _ in COLUMNS})
        rows.append(row)
    report = {"command": "sweep", "grid": str(grid.path), "out": str(out), "target_acc": target, "rows": rows,
              "runs": runs, "unfinished": missing}
    axes = [k for k in grid.axes if k != "seed"]
    hit = f"rounds to {target:.0%}" if target else None
    head = ["method", *axes, "arch", "seeds", *(t for _, t in COLUMNS[:4]), *([hit] if hit else []),
            *(t for _, t in COLUMNS[4:])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["label"], *(str(row["axes"][k]) for k in axes), row["arch"], str(len(row["runs"]))]
        cells += [mean_std(row[k]["values"]) for k, _ in COLUMNS[:4]]
        if hit:
            cells.append(", ".join("—" if h is None else str(h) for h in row["rounds_to_target"]))
        cells += [mean_std(row["upload_mb"]["values"]), mean_std(row["seconds"]["values"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    note = f"\n{len(missing)} of {len(grid.runs)} runs unfinished (not in the table): {', '.join(missing[:5])}" \
        if missing else ""
    text = (f"Sweep {grid.path.name}: {len(grid.runs) - len(missing)} runs; mean ± std over seeds\n\n"
            + "\n".join(lines) + "\n" + note)
    return report, text
