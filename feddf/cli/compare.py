"""`feddf compare`: accuracy-vs-round plot and summary table of `feddf train` runs.

    feddf compare runs/fedavg runs/feddf-gan --target-acc 0.8
"""
from __future__ import annotations

from pathlib import Path

import click


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, metavar="RUN_DIR [RUN_DIR ...]")
@click.option("--target-acc", type=float, metavar="A", help="Target test accuracy as a fraction (e.g. 0.8): report "
              "the first round reaching it (the FedDF paper's Table 1 metric).")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder [default: reports/compare-<runs>]: "
              "a new or empty folder, or an earlier compare report (with --force).")
@click.option("--force", is_flag=True, help="Replace the report an earlier `feddf compare` wrote to --out (a folder "
              "holding anything else is never touched).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout instead of the table.")
def command(runs, target_acc, out, force, as_json) -> None:
    """Compare runs: best and final accuracy, rounds to --target-acc, distillation steps, wall time.

    \b
    Writes report.json, report.md, a self-contained report.html and figures/accuracy.png to --out; an earlier
    report there is replaced only with --force.

    \b
    Example:
      feddf compare runs/fedavg runs/feddf-gan runs/feddf-cifar100 --target-acc 0.75 --out reports/table1
    """
    import json

    from feddf.audit import report as rep
    from feddf.audit.compare import compare_runs

    from feddf.runfolder import claim_output, legacy_report

    claim = lambda d: claim_output(d, kind="compare", force=force, legacy=legacy_report)  # noqa: E731
    folder = claim(out) if out else None  # a refused --out costs nothing: checked before the runs are read
    try:
        report, figures = compare_runs(list(runs), target_acc)
        if folder is None:
            folder = claim(Path("reports") / ("compare-" + "+".join(r["name"] for r in report["runs"][:3])))
        out_dir = folder.path
        report["out"] = str(out_dir)
        folder.publish(lambda d: rep.write_files(d, report, figures, rep.compare_markdown(report),
                                                 rep.compare_html(report, figures)))
    finally:
        if folder is not None:
            folder.release()
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo(rep.compare_summary(report))
        click.echo(f"report: {out_dir / 'report.html'}")
