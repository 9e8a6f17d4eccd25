"""`feddf compare` and `feddf audit --labeler RUN_DIR` on two small real `feddf train` runs (Fashion-MNIST)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

TINY = ["--train-limit", "300", "--test-limit", "200", "--clients", "2", "--fraction", "1", "--rounds", "2",
        "--local-epochs", "1", "--arch", "cnn", "-q"]


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory, fmnist_available):
    root = tmp_path_factory.mktemp("runs")
    run_cli("train", *TINY, "--aggregator", "fedavg", "--out", str(root / "fedavg"), check=True)
    run_cli("train", *TINY, "--aggregator", "feddf", "--distill-source", "noise", "--distill-steps", "10",
            "--eval-every", "5", "--out", str(root / "feddf-noise"), check=True)
    return root / "fedavg", root / "feddf-noise"


def test_compare_two_real_runs(real_runs, tmp_path):
    out = tmp_path / "cmp"
    proc = run_cli("compare", *map(str, real_runs), "--target-acc", "0.05", "--out", str(out), "--json", check=True)
    rep = json.loads(proc.stdout)
    rows = {r["run"]: r for r in rep["rows"]}
    assert set(rows) == {"fedavg", "feddf-noise"}
    for run in real_runs:
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        row = rows[run.name]
        accs = [m["acc"]["cnn"]["distilled"] if m["acc"]["cnn"]["distilled"] is not None else m["acc"]["cnn"]["fedavg"]
                for m in metrics]
        assert row["arch"] == "cnn" and row["rounds_run"] == len(metrics) == 2
        assert row["best_acc"] == pytest.approx(max(accs)) and row["final_acc"] == pytest.approx(accs[-1])
        assert row["rounds_to_target"] == 1            # any trained model beats 5% accuracy in round 1
        recorded = sum(m["client_seconds"] + m["distill_seconds"] for m in metrics)  # bookkeeping, not a timing
        assert row["wall_seconds"] == pytest.approx(recorded)
        assert row["aggregator"] == run.name.split("-")[0]
    assert rows["fedavg"]["distill_steps"] == 0 and rows["feddf-noise"]["distill_steps"] == 20
    assert (out / "figures" / "accuracy.png").is_file() and (out / "report.html").is_file()


def test_audit_with_a_run_folder_as_labeler(real_runs, tmp_path):
    cache = tmp_path / "fm.h5"
    run_cli("cache", "import", "fashion-mnist:test[:120]", "--out", str(cache), "-q", check=True)
    out = tmp_path / "aud"
    proc = run_cli("audit", str(cache), "--labeler", str(real_runs[1]), "--out", str(out), "--json", "-q", check=True)
    rep = json.loads(proc.stdout)
    s = rep["sources"][0]
    assert rep["labeler"]["arch"] == "cnn" and rep["labeler"]["path"].endswith("models/cnn.pt")
    from feddf.data import get_dataset

    truth = get_dataset("fashion-mnist:test[:120]").labels.numpy()
    assert [r["count"] for r in s["conditioning"]["per_class"]] == np.bincount(truth, minlength=10).tolist()
    lab = s["labeler"]
    assert lab["n"] == 120 and lab["num_classes"] == 10
    # an imported set of the task itself (same class names): agreement is the labeler's accuracy on its labels
    assert [r["name"] for r in s["conditioning"]["per_class"]] == [r["name"] for r in lab["per_class"]]
    agr = lab["agreement"]
    assert agr["against"] == "labels" and agr["mapped"] == 120
    from feddf.models import load_classifier

    clf = load_classifier(real_runs[1])
    pred = clf.logits(get_dataset("fashion-mnist:test[:120]").images).argmax(1).numpy()
    assert agr["agreement"] == pytest.approx(float((pred == truth).mean()))
