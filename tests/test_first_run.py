"""Runs that explain themselves: `feddf train` names its run folder and transfer set, warns once when a round has a
single teacher, prints accuracies as fractions with '-' for what a round lacks; `feddf audit` reports the labeler's
own accuracy and warns when it is near chance. Real subprocess runs on tiny Fashion-MNIST subsets.

    python -m pytest -q tests/test_first_run.py
"""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.test_audit_fixtures import make_cache, make_classifier

TINY = ["--dataset", "fashion-mnist", "--arch", "cnn", "--rounds", "1", "--local-epochs", "1", "--train-limit", "300",
        "--test-limit", "200", "--distill-steps", "4", "--eval-every", "2", "--eval-batch-size", "200", "--quiet"]
FMNIST_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                "Ankle boot"]


@pytest.fixture(scope="module")
def fedavg_run(tmp_path_factory, fmnist_available):
    out = tmp_path_factory.mktemp("first") / "fedavg"
    proc = run_cli("train", *TINY, "--clients", "2", "--aggregator", "fedavg", "--out", str(out), check=True)
    return out, proc


def test_train_names_its_folder_and_source_and_fedavg_rows_print_no_none(fedavg_run):
    out, proc = fedavg_run
    lines = proc.stdout.splitlines()
    assert lines[0] == f"run folder: {out}"
    assert lines[1] == "transfer set: none (fedavg does not distil)"
    assert "warning" not in proc.stdout  # FedAvg has no teachers to count
    assert "None" not in proc.stdout
    assert any(line.startswith("test accuracy (fraction") for line in lines)
    (row,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    last = lines[-1].split()
    assert last[0] == "1" and last[1] == f"{row['acc']['cnn']['fedavg']:.4f}" and last[2] == "-"  # df: none
    assert last[4] == "-"  # best_step of a round that did not distil


def test_feddf_with_one_teacher_a_round_warns_once(tmp_path, fmnist_available):
    # --clients 2 at the default --fraction 0.4: one client a round, so the ensemble is the FedAvg model
    out = tmp_path / "one"
    proc = run_cli("train", *TINY, "--clients", "2", "--rounds", "2", "--aggregator", "feddf", "--distill-source",
                   "noise", "--out", str(out), check=True)
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "1 teacher" in warnings[0] and "--fraction" in warnings[0]
    assert "transfer set: noise (uniform random 1x28x28 images" in proc.stdout


def test_feddf_names_its_cache_and_has_no_warning_with_several_teachers(tmp_path, fmnist_available):
    cache = tmp_path / "real.h5"
    make_cache(cache, n=64, res=28, label_names=FMNIST_NAMES)
    out = tmp_path / "run"
    proc = run_cli("train", *TINY, "--clients", "3", "--fraction", "1", "--aggregator", "feddf", "--distill-source",
                   str(cache), "--out", str(out), check=True)
    assert f"run folder: {out}" in proc.stdout.splitlines()
    assert f"transfer set: {cache.resolve()} (imported cache of test-fixture), 64 images, in memory" in proc.stdout
    assert "warning" not in proc.stdout


def test_audit_prints_the_labelers_accuracy_its_run_recorded(fedavg_run, tmp_path):
    run, _ = fedavg_run
    (row,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    cache = tmp_path / "c.h5"
    make_cache(cache, n=40, res=28)
    proc = run_cli("audit", str(cache), "--labeler", str(run), "--out", str(tmp_path / "rep"), "-q", check=True)
    acc = row["acc"]["cnn"]["fedavg"]
    assert (f"labeler accuracy: {acc:.4f} on fashion-mnist:test[5000:], 200 images (recorded by its run {run} "
            f"after round 1; chance 0.1000)") in proc.stdout
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    (check,) = rep["labeler"]["accuracy"]["checks"]
    assert check["accuracy"] == acc and check["n"] == 200
    assert ("warning: the labeler is near chance" in proc.stdout) == (acc < 0.2)


def test_audit_warns_when_the_labeler_is_near_chance(tmp_path, fmnist_available):
    # an untrained classifier of the task's classes, measured on a labelled --reference of that task
    clf = make_classifier(tmp_path / "untrained.pt", num_classes=10, res=28, names=FMNIST_NAMES)
    cache = tmp_path / "c.h5"
    make_cache(cache, n=40, res=28)
    proc = run_cli("audit", str(cache), "--labeler", str(clf), "--reference", "fashion-mnist:test[:300]", "--no-fid",
                   "--no-fidelity", "--out", str(tmp_path / "rep"), "-q", check=True)
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    (check,) = rep["labeler"]["accuracy"]["checks"]
    assert check["n"] == 300 and check["how"] == "measured on --reference" and check["accuracy"] < 0.2
    lines = proc.stdout.splitlines()
    assert f"labeler accuracy: {check['accuracy']:.4f} on fashion-mnist:test[:300], 300 images (measured on " \
           "--reference; chance 0.1000)" in lines
    (warning,) = [line for line in lines if line.startswith("warning:")]
    assert "near chance" in warning and "--labeler" in warning


def test_audit_says_when_the_labelers_accuracy_is_unknown(tmp_path):
    clf = make_classifier(tmp_path / "lab.pt", num_classes=4)
    cache = tmp_path / "c.h5"
    make_cache(cache, n=30)
    proc = run_cli("audit", str(cache), "--labeler", str(clf), "--out", str(tmp_path / "rep"), "-q", check=True)
    assert "labeler accuracy: unknown (" in proc.stdout and "--reference" in proc.stdout
