"""`feddf audit`: class-coverage (+ labeler, + FID) report of one or more caches.

    feddf audit cache/dcgan-fashion-mnist-28px-20000.h5 --labeler runs/demo-feddf --min-effective-classes 8
"""
from __future__ import annotations

from pathlib import Path

import click


@click.command("audit")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE [SOURCE ...]")
@click.option("--labeler", metavar="RUN_DIR|CKPT", help="Classifier of the target task run over each source: a "
              "`feddf train` run folder or a models/<arch>.pt checkpoint.")
@click.option("--labeler-arch", metavar="ARCH", help="Which model of a run folder that holds several.")
@click.option("--reference", metavar="DATASET|CACHE|STATS.npz", help="FID reference: a dataset spec (e.g. "
              "fashion-mnist:test), a cache, or statistics saved as .npz (mu, sigma).")
@click.option("--fid/--no-fid", default=None, help="Compute FID against --reference [default: when --reference "
              "is given].")
@click.option("--fid-weights", type=click.Path(exists=True, dir_okay=False), help="pytorch-fid Inception weights "
              "(pt_inception-2015-12-05-6726825d.pth) [default: $TORCH_HOME/hub/checkpoints]; never downloaded.")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder [default: reports/audit-<source>]: "
              "a new or empty folder, or an earlier audit report (with --force).")
@click.option("--force", is_flag=True, help="Replace the report an earlier `feddf audit` wrote to --out (a folder "
              "holding anything else is never touched).")
@click.option("--min-effective-classes", type=click.FloatRange(min=0), metavar="K", help="Exit 1 unless every "
              "source has at least K effective classes (labeler's if --labeler, else targets', else conditioning).")
@click.option("--low-confidence", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Labeler predictions with max softmax below this count as low-confidence.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Use a seeded random subset of N images per "
              "source (and reference) for labeler, FID and grids [default: all]; class counts always use all.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --limit subset and image grids.")
@click.option("--stats-dir", type=click.Path(file_okay=False), help="Cache of reference FID statistics "
              "[default: $FEDDF_DATA_ROOT/fid-stats].")
@click.option("--fidelity/--no-fidelity", default=None, help="Precision, recall, density, coverage and KID per "
              "class against --reference images [default: when --labeler and an image --reference are given].")
@click.option("--k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Nearest neighbours of the "
              "precision/recall/density/coverage balls.")
@click.option("--min-coverage", type=click.FloatRange(0, 1), metavar="C", help="Exit 1 when the set's coverage or "
              "any class's coverage (labeler features) is below C.")
@click.option("--kid-subsets", type=click.IntRange(min=1), default=100, show_default=True,
              help="KID: number of random subsets.")
@click.option("--kid-subset-size", type=click.IntRange(min=2), default=1000, show_default=True,
              help="KID: images per subset (at most the smaller side).")
@click.option("--bootstrap", type=click.IntRange(min=0), default=100, show_default=True, help="Bootstrap replicates "
              "for 95% intervals of groups with fewer than 1000 images on a side (0: none).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout instead of the summary table.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def command(sources, labeler, labeler_arch, reference, fid, fid_weights, out, force, min_effective_classes, low_confidence,
            limit, batch_size, seed, stats_dir, fidelity, k, min_coverage, kid_subsets, kid_subset_size, bootstrap,
            device, as_json, quiet) -> None:
    """Report class coverage, labeler coverage and FID of caches (GAN-generated or imported real sets).

    \b
    Writes report.json (every number), report.md, a self-contained report.html and figures/*.png to --out, and
    prints a summary table. With --labeler and --reference images it adds precision, recall, density, coverage
    and KID overall and per class. Exit 1 when --min-effective-classes or --min-coverage is not met.

    \b
    Examples:
      feddf audit cache/dcgan-fashion-mnist-28px-20000.h5 --labeler runs/demo-feddf
      feddf audit cache/a.h5 cache/b.h5 --reference fashion-mnist:test --limit 5000 --out reports/ab
      feddf audit cache/a.h5 --reference 'fashion-mnist:test[5000:]' --labeler runs/x --min-coverage 0.5
    """
    import json

    from feddf.api import audit
    from feddf.audit import report as rep

    report = audit(list(sources), out=out, force=force, progress=not quiet, labeler=labeler, labeler_arch=labeler_arch,
                   reference=reference, fid=fid, fid_weights=fid_weights, min_effective_classes=min_effective_classes,
                   batch_size=batch_size, limit=limit, seed=seed, device=device, low_confidence=low_confidence,
                   stats_dir=stats_dir, fidelity=fidelity, k=k, min_coverage=min_coverage,
                   kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, bootstrap=bootstrap)
    out_dir = Path(report["out"])
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo(rep.audit_summary(report))
        click.echo(f"report: {out_dir / 'report.html'}")
    if report.get("gate") and not report["gate"]["passed"]:
        gate = report["gate"]
        click.echo(f"Error: coverage below --min-effective-classes {gate['min_effective_classes']:g}: "
                   + "; ".join(gate["failures"]), err=True)
    cov_gate = report.get("fidelity_gate")
    if cov_gate and not cov_gate["passed"]:
        click.echo(f"Error: coverage below --min-coverage {cov_gate['min_coverage']:g}: "
                   + "; ".join(cov_gate["failures"]), err=True)
    if (report.get("gate") and not report["gate"]["passed"]) or (cov_gate and not cov_gate["passed"]):
        raise SystemExit(1)
