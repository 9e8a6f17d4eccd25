"""`feddf compare` on run folders that follow docs/CONTRACTS.md (built by hand here)."""
from __future__ import annotations

import json
import re

import pytest

from feddf.audit.compare import load_run, rounds_to_target, server_acc, summarize
from feddf.errors import FeddfError
from tests.conftest import run_cli
from tests.test_audit_fixtures import make_run


def _invoke(*args):
    from click.testing import CliRunner

    from feddf.cli import main

    return CliRunner().invoke(main, list(args))


def test_rounds_to_target_and_server_accuracy():
    assert rounds_to_target([1, 2, 3, 4], [0.2, 0.5, 0.49, 0.8], 0.5) == 2
    assert rounds_to_target([1, 2], [0.2, 0.3], 0.5) is None
    assert server_acc({"fedavg": 0.4, "distilled": 0.6}) == 0.6
    assert server_acc({"fedavg": 0.4, "distilled": None}) == 0.4
    assert server_acc({"fedavg": None, "distilled": None}) is None


CLIENT_S, DISTILL_S = 3.0, 1.5  # the seconds each fixture round records (data, not a timing of this test)


@pytest.fixture()
def two_runs(tmp_path):
    a = make_run(tmp_path / "fedavg", {"cnn": [(0.30, None), (0.55, None), (0.62, None), (0.60, None)]},
                 aggregator="fedavg", distill_source=None, client_s=CLIENT_S, distill_s=0.0)
    b = make_run(tmp_path / "feddf-gan", {"cnn": [(0.30, 0.41), (0.50, 0.63), (0.60, 0.70), (0.66, 0.69)],
                                          "resnet8": [(0.20, 0.35), (0.40, 0.52), (0.50, 0.58), (0.55, 0.61)]},
                 steps=50, client_s=CLIENT_S, distill_s=DISTILL_S)
    return a, b


def test_summarize_table_numbers(two_runs):
    rows = summarize([load_run(p) for p in two_runs], target=0.6)
    by = {(r["run"], r["arch"]): r for r in rows}
    fa = by[("fedavg", "cnn")]
    assert fa["best_acc"] == 0.62 and fa["best_round"] == 3 and fa["final_acc"] == 0.60
    # the report's time column sums the seconds recorded in metrics.jsonl over the 4 rounds
    assert fa["rounds_to_target"] == 3 and fa["distill_steps"] == 0 and fa["wall_seconds"] == 4 * CLIENT_S
    fd = by[("feddf-gan", "cnn")]
    assert fd["best_acc"] == 0.70 and fd["final_acc"] == 0.69 and fd["rounds_to_target"] == 2
    assert fd["distill_steps"] == 200 and fd["wall_seconds"] == 4 * (CLIENT_S + DISTILL_S)
    assert by[("feddf-gan", "resnet8")]["rounds_to_target"] == 4
    assert by[("feddf-gan", "cnn")]["best_ensemble_acc"] == 0.66


def test_compare_cli_writes_md_html_png_json(two_runs, tmp_path):
    out = tmp_path / "rep"
    proc = run_cli("compare", *map(str, two_runs), "--target-acc", "0.65", "--out", str(out), check=True)
    assert "rounds to target" in proc.stdout and "feddf-gan" in proc.stdout and "not reached" in proc.stdout
    for f in ("report.json", "report.md", "report.html", "figures/accuracy.png"):
        assert (out / f).is_file()
    assert (out / "figures/accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads((out / "report.json").read_text())
    assert rep["target_acc"] == 0.65 and len(rep["rows"]) == 3
    row = next(r for r in rep["rows"] if r["run"] == "feddf-gan" and r["arch"] == "cnn")
    assert row["rounds_to_target"] == 3
    html = (out / "report.html").read_text()
    imgs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert len(imgs) == 1 and imgs[0].startswith("data:image/png;base64,")
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "figures/accuracy.png" in (out / "report.md").read_text()


def test_compare_json_flag(two_runs, tmp_path):
    res = _invoke("compare", *map(str, two_runs), "--out", str(tmp_path / "r"), "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep == json.loads((tmp_path / "r" / "report.json").read_text())
    assert all(r["rounds_to_target"] is None for r in rep["rows"])     # no --target-acc


def test_truncated_last_metrics_line_is_skipped(tmp_path):
    run = load_run(make_run(tmp_path / "killed", {"cnn": [(0.3, 0.4), (0.5, 0.6)]}, truncated_tail=True))
    assert len(run.records) == 2 and run.skipped_lines == 1


def test_bad_run_dirs_fail_with_one_line(two_runs, tmp_path):
    def one_line(res, needle):
        assert res.exit_code == 1, res.output
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], res.stderr

    out = tmp_path / "never"
    proc = run_cli("compare", str(tmp_path / "nope"), "--out", str(out))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr
    (tmp_path / "empty").mkdir()
    one_line(_invoke("compare", str(tmp_path / "empty"), "--out", str(out)), "config.json")
    damaged = make_run(tmp_path / "damaged", {"cnn": [(0.3, 0.4), (0.5, 0.6)]})
    lines = (damaged / "metrics.jsonl").read_text().splitlines()
    (damaged / "metrics.jsonl").write_text("{broken\n" + "\n".join(lines) + "\n")
    one_line(_invoke("compare", str(damaged), "--out", str(out)), "metrics.jsonl:1")
    fresh = make_run(tmp_path / "fresh", {"cnn": [(0.3, 0.4)]})
    (fresh / "metrics.jsonl").write_text("")
    one_line(_invoke("compare", str(fresh), "--out", str(out)), "no completed round")
    one_line(_invoke("compare", str(two_runs[0]), "--target-acc", "80", "--out", str(out)), "fraction")
    assert not out.exists()
    assert _invoke("compare", "--out", str(out)).exit_code == 2
    with pytest.raises(FeddfError):
        load_run(tmp_path / "empty")


def test_compare_help():
    proc = run_cli("compare", "--help", check=True)
    for opt in ("RUN_DIR", "--target-acc", "--out", "--json"):
        assert opt in proc.stdout
