"""`feddf audit` as a function: `feddf.audit(...)` (this package, callable) and `feddf.api.audit` both run `audit`
here, which merges the options into an AuditConfig, runs the audit (run.py) and writes the report files (report.py).

    python -c "from feddf.audit.entry import audit; help(audit)"

It lives in the audit package, not in feddf/api.py, so that the callable package needs no import from a higher layer
(docs/architecture.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from feddf.checks import merge_options
from feddf.errors import FeddfError


def default_audit_out(sources: list[str]) -> Path:
    from feddf.audit.sources import unique_names

    return Path("reports") / ("audit-" + "+".join(unique_names(list(sources))[:3]))


def audit(sources: str | Iterable[str] | None = None, *, config=None, out: str | None = None, write: bool = True,
          force: bool = False, progress: bool = True, **options: Any) -> dict:
    """Run `feddf audit` on one or more caches; writes report.json/md/html + figures to `out` (default
    reports/audit-<source>; write=False writes nothing; an earlier audit report there is replaced only with
    force=True, a folder holding anything else is refused) and returns report.json's dict. A failed
    min_effective_classes gate is `report["gate"]["passed"] == False` (the CLI exits 1 on it).

    `feddf.audit("cache/d.h5", labeler="runs/demo")["sources"][0]["labeler"]["effective_classes"]`."""
    from feddf.audit import report as rep
    from feddf.audit.fid import save_stats
    from feddf.audit.run import AuditConfig, run_audit

    if sources is not None:
        options["sources"] = [sources] if isinstance(sources, (str, Path)) else [str(s) for s in sources]
    if config is None and "sources" not in options:
        raise FeddfError("feddf.audit(): give the caches to audit, e.g. feddf.audit('cache/x.h5')")
    cfg = merge_options(AuditConfig, config, options, "audit")
    out_dir = Path(out) if out else default_audit_out(cfg.sources)
    if not write:
        result = run_audit(cfg, progress=progress)
        result.report["out"] = None
        return result.report
    from feddf.runfolder import claim_output, legacy_report

    # a foreign, busy or unwritable --out fails before the audit runs, not after
    with claim_output(out_dir, kind="audit", force=force, legacy=legacy_report) as folder:
        result = run_audit(cfg, progress=progress)
        result.report["out"] = str(out_dir)

        def write_report(d: Path) -> None:
            rep.write_files(d, result.report, result.figures, rep.audit_markdown(result.report),
                            rep.audit_html(result.report, result.figures))
            for name, (mu, sigma, n, desc) in result.source_stats.items():
                save_stats(d / f"fid-stats-{name}.npz", mu, sigma, n, desc)   # reusable as --reference

        folder.publish(write_report)
    return result.report
