"""Run folders (feddf/runfolder.py): `feddf train --out` / `feddf gan-train --out` never write into a foreign folder,
into a run made with other settings, or into a folder another live process is using (real subprocesses)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from feddf.cli import main
from feddf.errors import FeddfError
from feddf.runfolder import LOCK, MARKER, FolderLock, claim
from tests.conftest import run_cli

TINY = ["--dataset", "fashion-mnist", "--arch", "cnn", "--clients", "2", "--fraction", "1", "--rounds", "1",
        "--local-epochs", "1", "--train-limit", "100", "--test-limit", "50", "--aggregator", "fedavg",
        "--eval-batch-size", "50", "--quiet"]


def snapshot(root: Path) -> dict:
    """Every file under root (path -> bytes, mode, mtime) and every folder: what 'untouched' means."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = (p.read_bytes() if p.is_file() else None, st.st_mode, st.st_mtime_ns)
    return out


def foreign_folder(tmp_path: Path) -> Path:
    d = tmp_path / "someone"
    (d / "models").mkdir(parents=True)
    (d / "config.json").write_text('{"lr": 0.1, "note": "my thesis run"}\n')
    (d / "metrics.jsonl").write_text('{"epoch": 1, "acc": 0.91}\n')
    (d / "models" / "x.pt").write_bytes(os.urandom(4096))
    return d


def one_error_line(p) -> str:
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), p.stderr
    return lines[0]


def refused(*args) -> str:
    """An in-process CLI call (refusals need no fresh interpreter) that must fail with one `Error:` line."""
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (res.output, res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


def test_a_foreign_folder_is_refused_and_untouched_byte_for_byte(tmp_path):
    d = foreign_folder(tmp_path)
    before = snapshot(d)
    line = one_error_line(run_cli("train", *TINY, "--out", str(d), timeout=120))  # the real process
    assert "not a feddf train run" in line and str(d) in line
    for extra in ([], ["--resume"]):
        assert "not a feddf train run" in refused("train", *TINY, "--out", str(d), *extra)
        line = refused("gan-train", "--data", "fashion-mnist:test[:64]", "--epochs", "1", "--out", str(d), "--quiet",
                       *extra)
        assert "not a feddf gan-train run" in line
    assert snapshot(d) == before and not (d / MARKER).exists() and not (d / LOCK).exists()


def test_other_settings_and_other_kinds_are_refused(tmp_path, fmnist_available):
    out = tmp_path / "run"
    run_cli("train", *TINY, "--out", str(out), check=True, timeout=300)
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == "train" and len(marker["config_hash"]) == 16 and marker["run_id"]
    assert not (out / LOCK).exists()  # released when the run ended
    before = snapshot(out)
    for extra in (["--alpha", "0.3"], ["--alpha", "0.3", "--resume"]):
        line = refused("train", *TINY, "--out", str(out), *extra)
        assert "made with other settings" in line and "alpha: 1.0 -> 0.3" in line
    line = refused("train", *TINY, "--out", str(out))  # same settings, no --resume
    assert "--resume" in line
    line = refused("gan-train", "--data", "fashion-mnist:test[:64]", "--out", str(out), "--quiet")
    assert "holds a feddf train run, not a gan-train run" in line
    assert snapshot(out) == before
    # --resume with the same settings and more rounds continues the run (the marker keeps its run id)
    run_cli("train", *TINY[:-1], "--rounds", "2", "--out", str(out), "--resume", "--quiet", check=True, timeout=300)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / MARKER).read_text())["run_id"] == marker["run_id"]


def test_a_concurrent_second_train_into_the_same_folder_is_refused(tmp_path, fmnist_available):
    out = tmp_path / "shared"
    args = [*TINY[:-1], "--rounds", "200", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "feddf", "train", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not (out / "metrics.jsonl").exists():
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        pid = (out / LOCK).read_text().strip()
        assert pid == str(first.pid)
        line = one_error_line(run_cli("train", *args, timeout=120))  # a second process
        assert "in use by another feddf process" in line and f"pid {first.pid}" in line
        for extra in ([], ["--resume"]):
            line = refused("train", *args, *extra)
            assert "in use by another feddf process" in line and f"pid {first.pid}" in line
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    FolderLock(out / LOCK, lambda pid: "still locked").release()  # kill -9 drops the lock at once


def test_claim_in_process_rules(tmp_path):
    with pytest.raises(FeddfError, match="is a file"):
        (tmp_path / "f").write_text("x")
        claim(tmp_path / "f", kind="train", settings={})
    with pytest.raises(FeddfError, match="cannot create --out"):
        claim(tmp_path / "f" / "sub", kind="train", settings={})
    fresh = claim(tmp_path / "new" / "deep", kind="train", settings={"a": 1})
    with pytest.raises(FeddfError, match="in use"):
        claim(tmp_path / "new" / "deep", kind="train", settings={"a": 1})
    fresh.release()
    assert not (tmp_path / "new" / "deep").exists()  # a claim that never wrote leaves nothing behind
    with claim(tmp_path / "r", kind="train", settings={"a": 1}) as f:
        f.mark()
    with claim(tmp_path / "r", kind="train", settings={"a": 1}):
        pass
    with pytest.raises(FeddfError, match=r"other settings \(a: 1 -> 2\)"):
        claim(tmp_path / "r", kind="train", settings={"a": 2})
    (tmp_path / "r" / MARKER).write_text("{broken")
    with pytest.raises(FeddfError, match="damaged"):
        claim(tmp_path / "r", kind="train", settings={"a": 1})


def test_legacy_run_folders_are_recognised_and_damaged_checkpoints_are_one_line(tmp_path, fmnist_available):
    """Folders written before .feddf-run markers (a feddf config.json next to checkpoint.pt) may be resumed; a junk or
    mistyped checkpoint there is one line and nothing in the folder changes."""
    import torch

    run = tmp_path / "old-train"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"versions": {"feddf": "0.1"}, "aggregator": "fedavg", "arch": "cnn",
                                                 "dataset": "fashion-mnist", "clients": 2}))
    (run / "checkpoint.pt").write_bytes(b"junk, not a zip or pickle")
    before = snapshot(run)
    assert "cannot read" in refused("train", "--out", str(run), "--resume", "--quiet")
    torch.save({"version": 1, "round": "three", "config": {}}, run / "checkpoint.pt")
    before = snapshot(run)
    assert "is damaged" in refused("train", "--out", str(run), "--resume", "--quiet")
    assert snapshot(run) == before and not (run / MARKER).exists()

    gan = tmp_path / "old-gan"
    gan.mkdir()
    (gan / "config.json").write_text(json.dumps({"versions": {"feddf": "0.1"}, "generator": {"nz": 100}}))
    (gan / "checkpoint.pt").write_bytes(b"junk")
    before = snapshot(gan)
    line = refused("gan-train", "--data", "fashion-mnist:test[:64]", "--out", str(gan), "--resume", "--quiet")
    assert "cannot read" in line and "checkpoint.pt" in line
    assert snapshot(gan) == before
