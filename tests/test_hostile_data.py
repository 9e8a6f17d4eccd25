"""Hostile task data and training settings: each gets one line and exit 1 before any run folder exists, or ends the
run with one line before anything NaN is saved (labels of 10^9, object arrays, too few images for a batch or for a
validation split, a --data-root typo, diverging training, a model without parameters, tampered metrics).

    .venv/bin/python -m pytest -q tests/test_hostile_data.py
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from feddf.errors import FeddfError
from tests.conftest import run_cli
from tests.test_audit_fixtures import make_run
from tests.test_corrupt_inputs import one_line_error

TINY = ["--arch", "cnn", "--clients", "2", "--rounds", "1", "--local-epochs", "1", "--distill-source", "noise",
        "--distill-steps", "2", "--eval-every", "1", "-q"]


def _npz(path, n=200, k=4, **arrays):
    rng = np.random.default_rng(0)
    arrays.setdefault("x", rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8))
    arrays.setdefault("y", np.arange(n) % k)
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return _npz(tmp_path_factory.mktemp("data") / "good.npz")


def test_a_label_of_10_9_is_one_line_before_any_allocation_or_folder(tmp_path):
    y = np.arange(200) % 4
    y[150] = 10**9
    huge = _npz(tmp_path / "huge.npz", y=y)
    out = tmp_path / "run"
    one_line_error(run_cli("train", "--dataset", f"npz:{huge}", *TINY, "--out", str(out), timeout=120),
                   "label 1000000000 (image 150) would make 1000000001 classes")
    assert not out.exists()  # refused before the run folder (not even a lock file)
    one_line_error(run_cli("gan-train", "--data", f"npz:{huge}", "--epochs", "1", "--out", str(tmp_path / "g"),
                           timeout=120), "would make 1000000001 classes")
    assert not (tmp_path / "g").exists()
    split = _npz(tmp_path / "split.npz", x_train=np.zeros((4, 1, 8, 8), np.uint8), y_train=np.array([0, 1, 2, 3]),
                 x_test=np.zeros((2, 1, 8, 8), np.uint8), y_test=np.array([0, 10**9]))
    one_line_error(run_cli("train", "--dataset", f"npz:{split}", *TINY, "--out", str(out), timeout=120),
                   "(y_test)", "would make 1000000001 classes")
    assert not out.exists()


def test_built_in_loaders_refuse_labels_outside_their_classes_and_rebuild_a_tampered_array_cache(tmp_path):
    from feddf.data.base import DatasetInfo, Loader, load_split

    info = DatasetInfo(name="toy", channels=1, size=4, num_classes=10, class_names=tuple("abcdefghij"),
                       mean=(0.5,), std=(0.25,), splits=("train",))
    images = np.zeros((3, 1, 4, 4), np.uint8)
    bad = Loader(info, lambda split, root: (images, np.array([0, 10**9, 1]), []))
    with pytest.raises(FeddfError, match=r"toy:train: 1 label\(s\) outside -1..9 .*image 1 has label 1000000000"):
        load_split(bad, "train", tmp_path)
    ok = Loader(info, lambda split, root: (images, np.array([0, 9, -1]), ["ok"]))
    (tmp_path / "toy").mkdir()
    np.savez(tmp_path / "toy" / "train.feddf.npz", images=images, labels=np.array([0, 10**9, 1]))  # tampered
    _, labels, files = load_split(ok, "train", tmp_path)
    assert labels.tolist() == [0, 9, -1] and files == ["ok"]  # rebuilt from the loader, not trusted


def test_npz_object_arrays_are_one_line(tmp_path):
    obj = _npz(tmp_path / "obj.npz", y=np.array([0, 1] * 100, dtype=object))
    one_line_error(run_cli("train", "--dataset", f"npz:{obj}", *TINY, "--out", str(tmp_path / "run")),
                   "array 'y' cannot be loaded", "plain numeric arrays")
    one_line_error(run_cli("cache", "import", f"npz:{obj}", "--out", str(tmp_path / "c.h5"), "-q"),
                   "array 'y' cannot be loaded")
    assert not (tmp_path / "run").exists() and not (tmp_path / "c.h5").exists()


def test_gan_train_with_fewer_images_than_a_batch_is_one_line_and_no_folder(tmp_path):
    few = _npz(tmp_path / "few.npz", n=10)  # its train split: 8 images
    out = tmp_path / "gan"
    one_line_error(run_cli("gan-train", "--data", f"npz:{few}", "--epochs", "1", "--batch-size", "64", "--out",
                           str(out)), "gives 8 image(s), fewer than one batch (--batch-size 64)")
    assert not out.exists()


def test_diverging_training_ends_naming_round_and_client_before_anything_nan_is_saved(tmp_path, good):
    out = tmp_path / "lr"
    line = one_line_error(run_cli("train", "--dataset", f"npz:{good}", *TINY, "--aggregator", "fedavg",
                                  "--local-lr", "1e30", "--out", str(out)), "round 1: client ", "NaN/inf",
                          "--local-lr")
    assert "Traceback" not in line
    assert not (out / "checkpoint.pt").exists() and not list((out / "models").glob("*.pt"))
    assert not (out / "metrics.jsonl").exists()
    out2 = tmp_path / "nanmodel"
    one_line_error(run_cli("train", "--dataset", f"npz:{good}", *TINY, "--arch", "tests.custom_models:build_nan",
                           "--out", str(out2)), "round 1: client ", "NaN/inf")
    assert not (out2 / "checkpoint.pt").exists() and not list((out2 / "models").glob("*.pt"))


def test_a_model_without_parameters_is_one_line(tmp_path, good):
    one_line_error(run_cli("train", "--dataset", f"npz:{good}", *TINY, "--arch",
                           "tests.custom_models:build_without_parameters", "--out", str(tmp_path / "run")),
                   "has no trainable parameters")
    assert not (tmp_path / "run").exists()


def test_an_empty_validation_split_is_refused_instead_of_nan_val_acc(tmp_path, good):
    one_line_error(run_cli("train", "--dataset", f"npz:{good}", *TINY, "--train-limit", "5", "--out",
                           str(tmp_path / "run")), "validation split is empty", "--train-limit",
                   "at least 5 images")
    assert not (tmp_path / "run").exists()


def test_a_missing_data_root_is_refused_not_created(tmp_path):
    typo = tmp_path / "typo"
    one_line_error(run_cli("train", "--dataset", "synthetic", *TINY, "--data-root", str(typo), "--out",
                           str(tmp_path / "run")), f"--data-root {typo} does not exist", "default root")
    assert not typo.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value, needle", [
    ("round", -3, "round -3 is not a round number"),
    ("acc", {"cnn": {"fedavg": float("inf"), "distilled": None}}, "acc of cnn"),
    ("ensemble_acc", float("nan"), "ensemble_acc nan"),
    ("client_seconds", -1.0, "client_seconds -1.0 is not a duration"),
])
def test_compare_refuses_a_tampered_metrics_line_naming_file_and_line(tmp_path, field, value, needle):
    run = make_run(tmp_path / "run", {"cnn": [(0.3, 0.4), (0.5, 0.6)]})
    lines = (run / "metrics.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec[field] = value
    lines[1] = json.dumps(rec)  # json writes inf/nan as Infinity/NaN, which json.loads accepts
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "rep"
    one_line_error(run_cli("compare", str(run), "--out", str(out)), "metrics.jsonl:2", needle)
    assert not out.exists()


def test_compare_refuses_a_round_recorded_twice(tmp_path):
    run = make_run(tmp_path / "run", {"cnn": [(0.3, 0.4), (0.5, 0.6)]})
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines + [lines[0]]) + "\n")
    one_line_error(run_cli("compare", str(run), "--out", str(tmp_path / "rep")), "metrics.jsonl:3",
                   "round 1 is recorded twice (first on line 1)")
