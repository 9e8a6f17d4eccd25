"""Hostile caches and checkpoints: a header that contradicts itself, labels beyond the class count, a damaged
identity, unreadable paths, zero-byte / pickled / non-finite labelers. Each is one line (or a verify problem),
never a traceback, and nothing NaN passes a filter.

    .venv/bin/python -m pytest -q tests/test_hostile_cache.py
"""
from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from feddf.cache import format as fmt
from feddf.errors import FeddfError
from tests.conftest import random_dcgan_checkpoint, run_cli
from tests.test_audit_fixtures import make_cache, make_classifier
from tests.test_corrupt_inputs import one_line_error


@pytest.fixture(scope="module")
def sound(tmp_path_factory):
    p = tmp_path_factory.mktemp("c") / "sound.h5"
    make_cache(p, n=120, channels=1, res=16, num_labels=4)
    return p


def _damaged(sound, tmp_path, name, **attrs):
    p = tmp_path / name
    shutil.copy(sound, p)
    with h5py.File(p, "r+") as f:
        for k, v in attrs.items():
            if k == "label":
                f[fmt.LABELS][7] = v
            else:
                f.attrs[k] = v
    return p


@pytest.mark.parametrize("attrs, needle", [
    ({"channels": 3}, "attribute channels=3 but /images implies 1"),
    ({"label": 42}, "/labels has 1 label(s) outside -1..3"),
])
def test_info_preview_train_and_audit_refuse_what_verify_flags(sound, tmp_path, attrs, needle):
    bad = _damaged(sound, tmp_path, "bad.h5", **attrs)
    proc = run_cli("cache", "verify", str(bad), "-q")
    assert proc.returncode == 1 and needle in proc.stderr and "Traceback" not in proc.stderr
    for argv in (["cache", "info", str(bad)], ["cache", "preview", str(bad), "--out", str(tmp_path / "p.png")],
                 ["audit", str(bad), "--out", str(tmp_path / "rep")],
                 ["train", "--dataset", f"cache:{bad}", "--arch", "cnn", "--aggregator", "fedavg", "--rounds", "1",
                  "--clients", "2", "--out", str(tmp_path / "run"), "-q"]):
        one_line_error(run_cli(*argv), f"{bad} is inconsistent", needle)
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("attrs, needle", [
    ({"config": "{not json"}, "attribute config is not JSON"),
    ({"identity": "[1, 2"}, "attribute identity is not JSON"),
    ({"complete": "yes"}, "attribute complete='yes' is not a boolean"),
])
def test_verify_fails_non_json_config_identity_and_a_non_boolean_complete(sound, tmp_path, attrs, needle):
    bad = _damaged(sound, tmp_path, "bad.h5", **attrs)
    proc = run_cli("cache", "verify", str(bad), "-q")
    assert proc.returncode == 1 and "FAILED" in proc.stderr and needle in proc.stderr, proc.stderr
    assert run_cli("cache", "verify", str(sound), "-q").returncode == 0


def test_gen_over_a_cache_with_a_damaged_identity_needs_force_and_then_replaces_it(tmp_path):
    ckpt = random_dcgan_checkpoint(tmp_path / "g.pth", nc=1)
    out = tmp_path / "gen.h5"
    gen = ["gen", "--generator", "dcgan", "--checkpoint", str(ckpt), "--n", "40", "--quiet", "--out", str(out)]
    run_cli(*gen, check=True)
    with h5py.File(out, "r+") as f:
        f.attrs["identity"] = "{damaged"
    one_line_error(run_cli(*gen), "identity attribute is missing or not JSON", "--force")
    run_cli(*gen, "--force", check=True)
    assert run_cli("cache", "verify", str(out), "-q").returncode == 0


def test_an_unreadable_cache_says_so_instead_of_not_hdf5(tmp_path, sound, monkeypatch):
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    one_line_error(run_cli("cache", "info", str(fifo), timeout=60), "not a regular file")
    from feddf.cache import reader

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(reader, "open", refuse, raising=False)  # root reads through chmod 000: inject the error
    with pytest.raises(FeddfError, match=r"cannot read .*sound.h5: Permission denied"):
        reader.open_cache(sound)


@pytest.fixture(scope="module")
def labelers(tmp_path_factory):
    d = tmp_path_factory.mktemp("labelers")
    ok = make_classifier(d / "ok.pt", num_classes=4, channels=1, res=16)
    ck = torch.load(ok, weights_only=True)
    ck["state_dict"] = {k: v * float("nan") if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
    torch.save(ck, d / "nan.pt")
    (d / "empty.pt").write_bytes(b"")
    torch.save({"model": torch.nn.Linear(2, 2)}, d / "pickled.pt")  # a whole module: needs weights_only=False
    return {k: d / f"{k}.pt" for k in ("ok", "nan", "empty", "pickled")}


@pytest.mark.parametrize("kind, needle", [
    ("nan", "NaN/inf value(s)"),
    ("empty", "is empty (0 bytes)"),
    ("pickled", "is not a plain state_dict / tensors-only checkpoint"),
])
def test_bad_labelers_are_one_line_in_gen_and_audit(tmp_path, sound, labelers, kind, needle):
    ckpt = random_dcgan_checkpoint(tmp_path / "g.pth", nc=1)
    gen = run_cli("gen", "--generator", "dcgan", "--checkpoint", str(ckpt), "--n", "20", "--quiet", "--labeler",
                  str(labelers[kind]), "--min-confidence", "0.5", "--out", str(tmp_path / "g.h5"))
    audit = run_cli("audit", str(sound), "--labeler", str(labelers[kind]), "--out", str(tmp_path / "rep"))
    for proc in (gen, audit):
        line = one_line_error(proc, str(labelers[kind]), needle)
        assert "weights_only=False" not in line
    assert not (tmp_path / "g.h5").exists()


def test_nan_confidence_never_passes_min_confidence():
    from feddf.generators.select import keep_draws

    pred = np.array([0, 1, 0, 1])
    conf = np.array([np.nan, 0.9, np.nan, 0.2])
    kept, st = keep_draws(pred, conf, n=4, k=2, min_confidence=0.5, balance=False)
    assert kept.tolist() == [1] and st["low"].tolist() == [2, 1]
    kept, _ = keep_draws(pred, conf, n=4, k=2, min_confidence=None, balance=True)
    assert kept.tolist() == [1, 3]


def test_a_classifier_header_claiming_10_9_classes_is_refused_before_building_the_model(tmp_path, labelers):
    from feddf.models import load_classifier

    ck = torch.load(labelers["ok"], weights_only=True)
    ck["num_classes"] = 10**9
    torch.save(ck, tmp_path / "huge.pt")
    with pytest.raises(FeddfError, match=r"damaged feddf classifier checkpoint \(num_classes 1000000000"):
        load_classifier(tmp_path / "huge.pt")
    assert load_classifier(labelers["ok"]).num_classes == 4
