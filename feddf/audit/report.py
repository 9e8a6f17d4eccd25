"""Writing reports: report.json (every number), report.md, a self-contained report.html (jinja2, figures as data
URIs), figures/*.png, and the plain-text summary table printed on stdout. Shared by `feddf audit` and `feddf compare`.

    feddf audit cache/x.h5 --out reports/x && ls reports/x
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from feddf.audit.labeler_accuracy import summary_lines
from feddf.audit.plots import data_uri
from feddf.utils import atomic_write_bytes, atomic_write_json

_TEMPLATES = Path(__file__).parent / "templates"


def fmt(v, digits: int = 3) -> str:
    """Human formatting for tables: None -> '-', floats to `digits` significant decimals."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}f}" if abs(v) < 1e5 else f"{v:.4g}"
    return str(v)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Fixed-width table for the terminal."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def render_html(template: str, **context) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = fmt
    return env.get_template(template).render(**context)


def write_files(out: Path, report: dict, figures: dict[str, bytes], md: str, html: str) -> None:
    """report.json, report.md, report.html and figures/*.png under `out` (each written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, png in figures.items():
        atomic_write_bytes(out / "figures" / name, png)
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", md.encode())
    atomic_write_bytes(out / "report.html", html.encode())


# ----------------------------------------------------------------------------------------------------------- audit

AUDIT_HEADER = ["source", "images", "classes", "TV->unif", "eff.cls (cond)", "eff.cls (target)", "eff.cls (labeler)",
                "mean conf", "low-conf", "agreement", "FID"]


def _fid_cell(fid: dict | None) -> str:
    if not fid:
        return "-"
    if not fid.get("available"):
        return "unavailable"
    if not fid.get("is_fid"):
        return "n/a (test weights)"
    return fmt(fid["value"], 2)


def audit_rows(report: dict) -> list[list[str]]:
    rows = []
    for s in report["sources"]:
        c, t, lab = s["conditioning"], s["targets"], s["labeler"]
        agr = (lab or {}).get("agreement") or {}
        rows.append([s["name"], str(s["n"]), f"{c['classes_present']}/{c['num_classes']}" if c else "uncond.",
                     fmt(c["tv_to_uniform"]) if c else "-", fmt(c["effective_classes"], 2) if c else "-", fmt(t["effective_classes"], 2) if t else "-",
                     fmt(lab["effective_classes"], 2) if lab else "-", fmt(lab["mean_confidence"]) if lab else "-",
                     fmt(lab["low_confidence_share"]) if lab else "-", fmt(agr.get("agreement")),
                     _fid_cell(s.get("fid"))])
    return rows


FIDELITY_HEADER = ["source", "space", "images", "reference", "precision", "recall", "density", "coverage",
                   "KID", "min class coverage"]
CLASS_HEADER = ["class", "name", "synthetic", "reference", "precision", "recall", "density", "coverage", "KID",
                "labeler acc. (ref.)", "note"]


def _ci(rec: dict, key: str) -> str:
    """`0.812 [0.77, 0.85]` when the group has a bootstrap interval, else the value."""
    ci = (rec.get("ci") or {}).get(key)
    return fmt(rec[key]) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _kid_cell(kid: dict | None) -> str:
    return "-" if not kid else f"{kid['value']:.4f} ± {kid['std']:.4f}"


def fidelity_rows(report: dict) -> list[list[str]]:
    """One row per (source, feature space) with the set-level numbers and the worst class coverage."""
    rows = []
    for s in report["sources"]:
        fid = s.get("fidelity") or {}
        for space in ("labeler", "inception"):
            ev = fid.get(space)
            if not ev or "overall" not in ev:
                continue
            o = ev["overall"]
            covs = [(r["coverage"], r["name"]) for r in ev.get("per_class") or [] if r["coverage"] is not None]
            worst = min(covs) if covs else None
            label = space + ("" if space == "labeler" or ev.get("is_fid") else " (random weights)")
            rows.append([s["name"], label, str(o["n_fake"]), str(o["n_real"]), _ci(o, "precision"),
                         _ci(o, "recall"), _ci(o, "density"), _ci(o, "coverage"), _kid_cell(o["kid"]),
                         f"{worst[0]:.3f} ({worst[1]})" if worst else "-"])
    return rows


def fidelity_class_rows(ev: dict) -> list[list[str]]:
    return [[str(r["class"]), fmt(r["name"]), str(r["n_fake"]), str(r["n_real"]), _ci(r, "precision"),
             _ci(r, "recall"), _ci(r, "density"), _ci(r, "coverage"), _kid_cell(r["kid"]),
             fmt(r.get("labeler_accuracy")), r.get("note") or ""]
            for r in ev.get("per_class") or []]


def _coverage_gate_line(report: dict, bold: str = "") -> list[str]:
    g = report.get("fidelity_gate")
    if not g:
        return []
    return [f"Coverage gate (min coverage {g['min_coverage']:g}): "
            + ("passed" if g["passed"] else f"{bold}FAILED{bold} - " + "; ".join(g["failures"]))]


def audit_summary(report: dict) -> str:
    """The stdout summary: the table, the FID status line, and the gate verdict."""
    lines = [text_table(AUDIT_HEADER, audit_rows(report))]
    if fidelity_rows(report):
        lines += ["", f"fidelity (k={report['fidelity']['k']}; [95% bootstrap interval] for small groups):",
                  text_table(FIDELITY_HEADER, fidelity_rows(report))]
        lines += _coverage_gate_line(report)
    fid = report["fid"]
    if fid.get("requested") and not fid.get("available"):
        lines.append(f"FID unavailable: {fid['reason']}")
    lines += summary_lines((report.get("labeler") or {}).get("accuracy"))
    gate = report.get("gate")
    if gate:
        lines.append(f"coverage gate (min effective classes {gate['min_effective_classes']:g}): "
                     + ("passed" if gate["passed"] else "FAILED - " + "; ".join(gate["failures"])))
    return "\n".join(lines)


def _class_rows(summary: dict, max_rows: int = 100) -> tuple[list[dict], bool]:
    """Per-class rows for md/html: all when K <= max_rows, else the max_rows/2 most and least frequent."""
    rows = summary["per_class"]
    if len(rows) <= max_rows:
        return rows, False
    srt = sorted(rows, key=lambda r: -r["count"])
    return srt[:max_rows // 2] + srt[-max_rows // 2:], True


def audit_markdown(report: dict) -> str:
    out = ["# feddf audit", "", f"Created {report['created']} on {report['device']}; feddf "
           f"{report['versions'].get('feddf')}, torch {report['versions'].get('torch')}.", "",
           md_table(AUDIT_HEADER, audit_rows(report)), ""]
    fid = report["fid"]
    if fid.get("requested"):
        if fid.get("available"):
            out += [f"FID against `{report['reference']['spec']}`: feature extractor {fid['feature_extractor']}, "
                    f"weights `{fid['weights']}`, resize {fid['resize']}, input {fid['input']}.", ""]
        else:
            out += [f"**FID unavailable: {fid['reason']}**", ""]
    lab_lines = summary_lines((report.get("labeler") or {}).get("accuracy"))
    out += [f"- {line}" for line in lab_lines] + ([""] if lab_lines else [])
    gate = report.get("gate")
    if gate:
        out += [f"Coverage gate (min effective classes {gate['min_effective_classes']:g}): "
                + ("passed" if gate["passed"] else "**FAILED** - " + "; ".join(gate["failures"])), ""]
    if fidelity_rows(report):
        out += [f"Fidelity and diversity against `{report['reference']['spec']}` (k = {report['fidelity']['k']}; "
                "see docs/audit.md):", "", md_table(FIDELITY_HEADER, fidelity_rows(report)), ""]
        out += _coverage_gate_line(report, "**") + [""]
    for s in report["sources"]:
        out += [f"## {s['name']}", "", f"`{s['path']}`: {s['n']} images, {s['channels']}x{s['resolution']}x"
                f"{s['resolution']}, {s['n_scanned']} scanned by labeler/FID.", ""]
        out += [md_table(["attribute", "value"], [[k, fmt(v)] for k, v in s["attrs"].items()]), ""]
        for key, title in (("conditioning", "Conditioning classes"), ("targets", "Target classes"),
                           ("labeler", "Labeler predictions"), ("recorded_labeler", "Labeler recorded at generation")):
            summ = s.get(key)
            if not summ:
                continue
            out += [f"### {title}", "", f"{summ['classes_present']}/{summ['num_classes']} classes present; min share "
                    f"{fmt(summ['min_share'])}, max share {fmt(summ['max_share'])}, TV to uniform "
                    f"{fmt(summ['tv_to_uniform'])}, entropy {fmt(summ['entropy_nats'])} nats, effective classes "
                    f"{fmt(summ['effective_classes'], 2)}."]
            if key == "labeler":
                agr = summ.get("agreement") or {}
                out += ["", f"Mean confidence {fmt(summ['mean_confidence'])}; share below "
                        f"{summ['low_confidence_threshold']:g}: {fmt(summ['low_confidence_share'])}; agreement with "
                        f"the cache's {agr.get('against') or 'targets'}: {fmt(agr.get('agreement'))}"
                        + (f" ({agr['reason']})" if "reason" in agr else "")]
            rows, cut = _class_rows(summ)
            has_conf = "mean_confidence" in rows[0] if rows else False
            hdr = ["class", "name", "count", "share"] + (["mean conf"] if has_conf else [])
            body = [[str(r["class"]), fmt(r["name"]), str(r["count"]), fmt(r["share"], 4)]
                    + ([fmt(r.get("mean_confidence"))] if has_conf else []) for r in rows]
            out += ["", ("Most and least frequent classes:" if cut else ""), md_table(hdr, body), ""]
            fig = s["figures"].get(key)
            if fig:
                out += [f"![{title}]({fig})", ""]
        for key in ("confidence", "mean_confidence", "grid_labeler", "grid_conditioning"):
            if key in s["figures"]:
                out += [f"![{key}]({s['figures'][key]})", ""]
        out += _fidelity_markdown(s)
        f = s.get("fid")
        if f:
            out += ["### FID", "", (f"FID {fmt(f['value'], 3)} ({f['n']} images vs {f['n_reference']} reference)"
                                    + (f" - {f['warning']}" if f.get("warning") else "")
                                    if f["available"] else f"FID unavailable: {f['reason']}"), ""]
    return "\n".join(out)


def _fidelity_markdown(s: dict) -> list[str]:
    fid = s.get("fidelity") or {}
    out = []
    for space in ("labeler", "inception"):
        ev = fid.get(space)
        if not ev:
            continue
        if "overall" not in ev:
            out += [f"### Fidelity ({space} features)", "", f"Unavailable: {ev.get('reason')}", ""]
            continue
        out += [f"### Fidelity ({ev['space']})", ""]
        if ev.get("per_class") is None:
            out += [f"Per-class numbers unavailable: {ev.get('per_class_unavailable')}.", ""]
        else:
            out += [md_table(CLASS_HEADER, fidelity_class_rows(ev)), ""]
        if space == "labeler" and s["figures"].get("fidelity"):
            out += [f"![per-class fidelity]({s['figures']['fidelity']})", ""]
    return out


def audit_html(report: dict, figures: dict[str, bytes]) -> str:
    uris = {f"figures/{name}": data_uri(png) for name, png in figures.items()}
    class_rows = {}
    for s in report["sources"]:
        for key in ("conditioning", "targets", "labeler", "recorded_labeler"):
            if s.get(key):
                class_rows[(s["name"], key)] = _class_rows(s[key])
    fid_class = {(s["name"], sp): fidelity_class_rows(s["fidelity"][sp]) for s in report["sources"]
                 for sp in ("labeler", "inception") if (s.get("fidelity") or {}).get(sp)
                 and "overall" in s["fidelity"][sp]}
    return render_html("audit.html.j2", report=report, header=AUDIT_HEADER, rows=audit_rows(report), uris=uris,
                       class_rows=class_rows, json_dump=lambda o: json.dumps(o, indent=2, sort_keys=True),
                       fid_header=FIDELITY_HEADER, fid_rows=fidelity_rows(report), class_header=CLASS_HEADER,
                       fid_class=fid_class, coverage_gate=_coverage_gate_line(report))


# --------------------------------------------------------------------------------------------------------- compare

COMPARE_HEADER = ["run", "arch", "aggregator", "source", "rounds", "best acc (0-1)", "best round", "final acc (0-1)",
                  "rounds to target", "distill steps", "wall time", "precision", "upload MB/round"]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{seconds:.1f}s")


def compare_rows(report: dict) -> list[list[str]]:
    target = report.get("target_acc")
    return [[r["run"], r["arch"], fmt(r["aggregator"]), fmt(r["distill_source"]), str(r["rounds_run"]),
             fmt(r["best_acc"], 4), fmt(r["best_round"]), fmt(r["final_acc"], 4),
             ("-" if target is None else (str(r["rounds_to_target"]) if r["rounds_to_target"] is not None
                                          else "not reached")),
             str(r["distill_steps"]), _duration(r["wall_seconds"]), r.get("client_precision", "fp32"),
             fmt(r.get("upload_mb_per_round"), 3)] for r in report["rows"]]


def compare_summary(report: dict) -> str:
    t = report.get("target_acc")
    return text_table(COMPARE_HEADER, compare_rows(report)) + (f"\ntarget accuracy: {t:g}" if t is not None else "")


def compare_markdown(report: dict) -> str:
    t = report.get("target_acc")
    out = ["# feddf compare", "", f"Created {report['created']}; feddf {report['versions'].get('feddf')}.", "",
           "Accuracy is the test accuracy of the server model each round ends with (distilled when the aggregator "
           "distilled, else FedAvg). Rounds to target = first round reaching "
           + (f"{t:g}." if t is not None else "the target (no --target-acc given)."), "",
           md_table(COMPARE_HEADER, compare_rows(report)), "", f"![accuracy vs round]({report['figures']['accuracy']})",
           "", "## Runs", ""]
    for r in report["runs"]:
        c = r["config"]
        out.append(f"- **{r['name']}** `{r['path']}`: {r['rounds']} rounds logged; dataset {c.get('dataset')}, "
                   f"archs {c.get('archs')}, aggregator {c.get('aggregator')}, distill source "
                   f"{c.get('distill_source')}, seed {c.get('seed')}")
    return "\n".join(out) + "\n"


def compare_html(report: dict, figures: dict[str, bytes]) -> str:
    uris = {f"figures/{name}": data_uri(png) for name, png in figures.items()}
    return render_html("compare.html.j2", report=report, header=COMPARE_HEADER, rows=compare_rows(report), uris=uris,
                       json_dump=lambda o: json.dumps(o, indent=2, sort_keys=True))
