"""`feddf sweep GRID.toml`: the product of a grid file's values over its base config, each run a real `feddf train`.

    feddf sweep benchmarks/grids/smoke.toml --out runs/smoke-sweep --parallel 2

The grid file's layout is in feddf/sweep/grid.py and docs/sweeps.md.
"""
from __future__ import annotations

from pathlib import Path

import click


@click.command("sweep")
@click.argument("grid_file", metavar="GRID.toml", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Sweep folder, parent of the run folders [default: the grid's [sweep] out, else runs/<GRID>].")
@click.option("--parallel", type=int, default=None, metavar="N",
              help="Runs at a time, one thread each (OMP_NUM_THREADS=1 unless set) [default: [sweep] parallel, "
                   "else 1].")
@click.option("--target-acc", type=float, default=None, metavar="A",
              help="Report the first round reaching this test accuracy (a fraction) [default: [sweep] target_acc].")
@click.option("--dry-run", is_flag=True, help="List the runs, their folders and status; run and write nothing.")
@click.option("--table-only", is_flag=True, help="Tabulate the finished runs; train nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (with --dry-run: the runs) as JSON on stdout.")
def command(grid_file, out, parallel, target_acc, dry_run, table_only, as_json) -> None:
    """Run a grid of `feddf train` runs and tabulate them (mean ± std over seeds).

    \b
    Each run is a `feddf train` subprocess in DIR/<run>; finished runs are skipped, unfinished ones resumed
    (rerun the same command after a crash or a kill), and DIR/sweep.md and DIR/sweep.json hold the table.

    \b
    Examples:
      feddf sweep benchmarks/grids/fair.toml --dry-run
      feddf sweep benchmarks/grids/fair.toml --out runs/fair --parallel 2
      feddf sweep benchmarks/grids/fair.toml --out runs/fair --table-only --json
    """
    import json

    from feddf.errors import FeddfError
    from feddf.sweep.grid import load_grid
    from feddf.sweep.run import MARK, check_sources, claim, plan, run_all
    from feddf.sweep.table import tabulate
    from feddf.utils import atomic_write_bytes, atomic_write_json

    grid = load_grid(grid_file)
    out = Path(out or grid.sweep.get("out") or f"runs/{grid.path.stem}")
    parallel = parallel if parallel is not None else grid.sweep.get("parallel", 1)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise FeddfError(f"--parallel {parallel}: must be a positive number of runs at a time, e.g. 2")
    target = target_acc if target_acc is not None else grid.sweep.get("target_acc")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                               or not 0 < target <= 1):
        raise FeddfError(f"--target-acc {target}: must be a fraction in (0, 1], e.g. 0.8")
    if dry_run:
        rows = plan(grid, out)
        if as_json:
            click.echo(json.dumps(rows, sort_keys=True))
        else:
            click.echo(f"{len(rows)} runs in {out}:")
            for r in rows:
                click.echo(f"  {r['name']}  [{r['status']} {r['rounds_done']}/{r['rounds']}]")
        return
    log = lambda s: click.echo(s, err=True)  # noqa: E731 - progress lines on stderr, the table on stdout
    failed = []
    if table_only:
        if not (out / MARK).is_file():
            raise FeddfError(f"--out {out} holds no sweep ({MARK} missing): run `feddf sweep {grid_file}` first")
        lock = None
    else:
        check_sources(grid)
        lock = claim(out, grid)
    try:
        if lock is not None:
            failed = run_all(grid, out, parallel, log)
        report, text = tabulate(grid, out, target)
        atomic_write_json(out / "sweep.json", report)
        atomic_write_bytes(out / "sweep.md", text.encode())
    finally:
        if lock is not None:
            lock.release()
    click.echo(json.dumps(report, sort_keys=True) if as_json else text + f"\ntable: {out / 'sweep.md'}")
    if failed:
        raise FeddfError(f"{len(failed)} of {len(grid.runs)} runs failed ({', '.join(failed[:3])}): see "
                         f"{out}/logs/<run>.log, then rerun the sweep to retry them")
