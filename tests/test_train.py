"""`feddf train` end to end on real Fashion-MNIST (tiny subsets, the `cnn` model, 1-2 rounds, a few distillation
steps) as a subprocess, with every kind of distillation source; resume after a real kill -9; bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from feddf.cli import main

# one intra-op thread: the test machine is shared, and OpenMP spin-waiting under contention is what makes runs slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = ["--dataset", "fashion-mnist", "--arch", "cnn", "--clients", "3", "--fraction", "1", "--rounds", "1",
        "--local-epochs", "1", "--train-limit", "300", "--test-limit", "200", "--distill-steps", "6",
        "--eval-every", "3", "--eval-batch-size", "200", "--quiet"]
CONTRACT_KEYS = {"round", "acc", "ensemble_acc", "distill_steps", "best_step", "client_seconds", "distill_seconds"}


def feddf(*args, check=True, timeout=240):
    p = subprocess.run([sys.executable, "-m", "feddf", *map(str, args)], capture_output=True, text=True, env=ENV,
                       timeout=timeout)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def comparable(rows):
    """Metrics without wall-clock fields: what must be identical between equal runs."""
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


def write_cache(path, n, channels, res, kind="generated"):
    from feddf.cache.writer import CacheWriter

    rng = np.random.default_rng(0)
    with CacheWriter(path, n=n, channels=channels, resolution=res, attrs={"kind": kind, "source": "test"},
                     num_labels=10) as w:
        w.append(rng.integers(0, 256, (n, channels, res, res), dtype=np.uint8), np.arange(n) % 10)
        w.finish()
    return path


def test_help():
    p = feddf("train", "--help")
    for flag in ("--distill-source", "--archs", "--resume", "--drop-worst", "--source-resize", "--test-split"):
        assert flag in p.stdout


def test_imported_real_set_and_fedavgm(tmp_path):
    out = tmp_path / "run"
    feddf("train", *TINY, "--distill-source", "fashion-mnist", "--cache-dir", tmp_path / "cache", "--out", out)
    cfg = json.loads((out / "config.json").read_text())
    src = cfg["hashes"]["source"]
    assert src["kind"] == "cache" and src["cache_kind"] == "imported" and src["n"] == 5000  # test[:5000]
    assert Path(src["path"]).name == "fashion-mnist-test-to5000.h5" and src["in_memory"]
    row = metrics(out)[0]
    assert row["target_cache"]["misses"] > 0  # finite in-memory source: targets are cached by sample id
    # FedAvgM over two rounds: no distillation, no source needed
    out2 = tmp_path / "avgm"
    feddf("train", *TINY, "--aggregator", "fedavgm", "--rounds", 2, "--out", out2)
    rows = metrics(out2)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["acc"]["cnn"]["distilled"] is None and r["distill_steps"]["cnn"] == 0 for r in rows)
    assert json.loads((out2 / "config.json").read_text())["server_momentum"] == 0.9


def test_generated_cache_and_a_resized_cache_with_heterogeneous_clients(tmp_path):
    cache = tmp_path / "cache"
    write_cache(cache / "old.h5", 64, 1, 28)
    time.sleep(0.05)
    write_cache(cache / "new.h5", 128, 1, 28)  # the newest generated cache is the default for --distill-source gan
    write_cache(cache / "imported.h5", 64, 1, 28, kind="imported")  # newer, but not generated
    out = tmp_path / "gan"
    feddf("train", *TINY, "--distill-source", "gan", "--cache-dir", cache, "--drop-worst", "--out", out)
    src = json.loads((out / "config.json").read_text())["hashes"]["source"]
    assert src["cache_kind"] == "generated" and Path(src["path"]).name == "new.h5" and not src["converted"]
    assert src["n"] == 128 and len(src["sha256"]) == 64
    assert "dropped" in metrics(out)[0]
    # a 3x32x32 cache is refused for a 1x28x28 task unless --source-resize
    rgb = write_cache(tmp_path / "rgb32.h5", 64, 3, 32)
    bad = feddf("train", *TINY, "--distill-source", rgb, "--out", tmp_path / "x", check=False)
    assert bad.returncode == 1 and "--source-resize" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()
    out2 = tmp_path / "resized"
    feddf("train", *TINY, "--distill-source", rgb, "--source-resize", "--archs", "cnn,resnet8", "--clients", 4,
          "--out", out2)
    assert json.loads((out2 / "config.json").read_text())["hashes"]["source"]["converted"]
    row = metrics(out2)[0]
    assert set(row["acc"]) == {"cnn", "resnet8"} and set(row["best_step"]) == {"cnn", "resnet8"}
    assert row["teachers"] == 4  # every prototype learns from all clients
    archs = [c["arch"] for c in json.loads((out2 / "partition.json").read_text())["clients"]]
    assert archs == ["cnn", "cnn", "resnet8", "resnet8"]
    assert (out2 / "models" / "resnet8.pt").exists() and (out2 / "models" / "cnn.pt").exists()


def test_noise_run_folder_contract_and_resume_after_kill_9(tmp_path):
    from feddf.models import load_classifier

    toml = tmp_path / "cfg.toml"
    toml.write_text('aggregator = "feddf"\ndistill-source = "noise"\nalpha = 0.5\nseed = 3\n')
    args = [*TINY, "--config", toml, "--seed", 4, "--rounds", 2, "--clients", 2, "--train-limit", 200]
    ref = tmp_path / "ref"
    p = feddf("train", *args, "--out", ref, "--json")
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["rounds"] == 2 and summary["out"] == str(ref)
    assert "client" in p.stderr and "round" in p.stderr  # partition table + final table (stderr under --json)
    cfg = json.loads((ref / "config.json").read_text())
    assert cfg["alpha"] == 0.5 and cfg["seed"] == 4  # a TOML value, and a flag overriding TOML
    assert cfg["archs"] == ["cnn"] and cfg["aggregator"] == "feddf" and cfg["distill_source"] == "noise"
    assert cfg["test_split"] == "test[5000:]" and cfg["versions"]["torch"] == torch.__version__
    assert cfg["hashes"]["data"] and all(len(h) == 64 for h in cfg["hashes"]["data"].values())
    part = json.loads((ref / "partition.json").read_text())
    n_val = part["server_val"]["n"]
    assert 15 <= n_val <= 25 and sum(c["n"] for c in part["clients"]) + n_val == 200  # ~10%, stratified
    assert all(sum(c["histogram"]) == c["n"] for c in part["clients"])
    rows = metrics(ref)
    assert [r["round"] for r in rows] == [1, 2] and all(CONTRACT_KEYS <= set(r) for r in rows)
    for r in rows:
        assert set(r["acc"]) == {"cnn"} and 0 <= r["acc"]["cnn"]["fedavg"] <= 1
        assert 0 <= r["acc"]["cnn"]["distilled"] <= 1 and 0 <= r["ensemble_acc"] <= 1
        assert 1 <= r["distill_steps"]["cnn"] <= 6 and r["best_step"]["cnn"] in (0, 3, 6)
    assert load_classifier(ref, "cnn").logits(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape == (2, 10)

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "feddf", "train", *map(str, args), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len(metrics(out)) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)  # mid-round 2 (or between rounds): at most that round is lost
    proc.wait()
    done = len(metrics(out))
    assert done == 1
    again = CliRunner().invoke(main, ["train", *map(str, args), "--out", str(out)])  # no --resume: refused
    assert again.exit_code == 1 and "--resume" in again.output and len(metrics(out)) == done
    feddf("train", "--out", out, "--resume", "--quiet")  # the run's own config.json supplies every other setting
    assert comparable(metrics(out)) == comparable(metrics(ref))
    changed = CliRunner().invoke(main, ["train", *map(str, args), "--out", str(out), "--resume", "--alpha", "0.3"])
    assert changed.exit_code == 1 and "alpha" in changed.output


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "mnist-ish"], "unknown dataset"),
    (["--arch", "resnet9"], "unknown architecture"),
    (["--distill-source", "imagenet64"], "unknown --distill-source"),
    (["--alpha", "0"], "--alpha 0.0"),
    (["--alpha", "-1"], "--alpha -1.0"),
    (["--fraction", "0"], "--fraction 0.0"),
    (["--fraction", "1.5"], "--fraction 1.5"),
    (["--clients", "400"], "training samples left for clients"),
    (["--distill-source", "missing.h5"], "does not exist"),
    (["--distill-source", "gan", "--cache-dir", "empty"], "no generated cache"),
    (["--aggregator", "fedsgd"], "--aggregator"),
    (["--ensemble", "max"], "--ensemble"),
    (["--aggregator", "fedavg", "--archs", "cnn,resnet8"], "--aggregator feddf"),
    (["--config", "nope.toml"], "no such file"),
])
def test_bad_input_is_one_line_and_exit_1(tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["train", *TINY, "--distill-source", "noise", "--out", "r", *extra])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_bad_input_from_the_real_process_has_no_traceback_and_usage_errors_exit_2(tmp_path):
    p = feddf("train", "--alpha", "-0.5", "--out", tmp_path / "r", check=False)
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0 and "--alpha" in p.stderr
    p = feddf("train", "--clients", "many", check=False)
    assert p.returncode == 2
