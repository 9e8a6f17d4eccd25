"""`feddf sweep`: a 2 x 2 grid of tiny real `feddf train` runs, killed mid-way (SIGKILL to the sweep's process
group), resumed and tabulated; bad grid files and options are refused with one line and nothing written; the shipped
grid files are valid and the fair-contest grid runs the configurations of benchmarks/experiment_fair.py."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
GRID = """
[base]
dataset = "fashion-mnist"
arch = "cnn"
aggregator = "fedavg"
clients = 2
fraction = 1.0
rounds = 2
local_epochs = 1
train_limit = 120
test_limit = 100
eval_batch_size = 100

[grid]
alpha = [0.5, 1.0]
seed = [0, 1]

[sweep]
target_acc = 0.3
"""


def rows_of(run: Path) -> int:
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def test_a_sweep_killed_mid_way_resumes_and_tabulates(tmp_path, fmnist_available):
    grid, out = tmp_path / "g.toml", tmp_path / "sweep"
    grid.write_text(GRID)
    p = run_cli("sweep", str(grid), "--out", str(out), "--dry-run", "--json", check=True)
    names = [r["name"] for r in json.loads(p.stdout)]
    assert names == ["run-alpha0.5-seed0", "run-alpha0.5-seed1", "run-alpha1-seed0", "run-alpha1-seed1"]
    assert not out.exists()  # --dry-run writes nothing

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "feddf", "sweep", str(grid), "--out", str(out), "--parallel", "2"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # kill the whole sweep (itself and its `feddf train` children) once a run is half done
        deadline = time.monotonic() + 300
        while not any(rows_of(out / n) == 1 for n in names) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    half = [n for n in names if rows_of(out / n) == 1]
    assert half, "no run reached its first round"

    p = run_cli("sweep", str(grid), "--out", str(out), "--parallel", "2", "--json", check=True)
    report = json.loads(p.stdout)
    assert all(rows_of(out / n) == 2 for n in names)
    assert any("resuming" in (out / "logs" / f"{n}.log").read_text() for n in half)
    assert [(r["axes"], r["seeds"]) for r in report["rows"]] == [({"alpha": 0.5}, [0, 1]), ({"alpha": 1.0}, [0, 1])]
    for row in report["rows"]:
        assert len(row["final"]["values"]) == 2 and row["final"]["std"] is not None
        assert len(row["rounds_to_target"]) == 2
    md = (out / "sweep.md").read_text()
    assert "| method | alpha | arch | seeds |" in md and " ± " in md
    assert json.loads((out / "sweep.json").read_text())["rows"] == report["rows"]

    p = run_cli("sweep", str(grid), "--out", str(out), check=True)  # all finished: nothing runs again
    assert "4 of 4 runs already finished" in p.stderr and "start " not in p.stderr


@pytest.mark.parametrize("text, message", [
    ("[grid]\nalpha = 0.1\n", "each axis is a non-empty list"),
    ("[methods.a]\nlocal_epoch = 2\n", "[methods.a]: unknown key 'local_epoch'"),
    ("[base]\nout = 'x'\n", "'out' is set by `feddf sweep`"),
    ("[grid]\nalpha = [0.1]\n[methods.a]\nalpha = 1.0\n", "sets 'alpha', which [grid] varies"),
    ("[grid]\nalpha = [0.1, -1.0]\n", "run run-alpha-1: --alpha -1.0"),
    ("[grids]\nalpha = [1]\n", "unknown section 'grids'"),
    ("[grid\n", "not valid TOML"),
    ("[methods.'a/b']\naggregator = 'fedavg'\n", "method names become folder names"),
])
def test_a_bad_grid_file_is_one_line_and_writes_nothing(tmp_path, text, message):
    grid, out = tmp_path / "g.toml", tmp_path / "sweep"
    grid.write_text(text)
    p = run_cli("sweep", str(grid), "--out", str(out))
    assert p.returncode == 1 and message in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not out.exists()


def test_bad_options_and_a_foreign_out_are_refused(tmp_path):
    grid, out = tmp_path / "g.toml", tmp_path / "sweep"
    grid.write_text("[base]\naggregator = 'fedavg'\n")
    for args, message in ((["--parallel", "0"], "--parallel 0"), (["--target-acc", "2"], "--target-acc 2"),
                          (["--table-only"], "holds no sweep")):
        p = run_cli("sweep", str(grid), "--out", str(out), *args)
        assert p.returncode == 1 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    p = run_cli("sweep", str(grid), "--out", str(out))
    assert p.returncode == 1 and "holds no sweep" in p.stderr
    assert sorted(os.listdir(out)) == ["notes.txt"]
    assert run_cli("sweep", "--parallel", "x", str(grid)).returncode == 2


def test_help():
    p = run_cli("sweep", "--help", check=True)
    for flag in ("--out", "--parallel", "--dry-run", "--table-only", "--target-acc", "--json"):
        assert flag in p.stdout


def test_the_fair_grid_runs_the_experiment_scripts_configurations():
    """Every run of benchmarks/grids/fair.toml resolves to the config experiment_fair.py trains (same flags)."""
    from feddf.cli.train import command as train_command
    from feddf.federated.config import FIELDS, TrainConfig
    from feddf.sweep.grid import load_grid

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from experiment_fair import METHODS

    grid = load_grid(ROOT / "benchmarks/grids/fair.toml")
    assert len(grid.runs) == 3 * 3 * len(METHODS)
    caches = {"gan": "cache/dcgan-fashion-mnist-28px-20000.h5", "public": "cache/fashion-mnist-test-0-5000.h5"}
    for spec in grid.runs:
        _, source, extra = METHODS[spec.method]
        flags = list(extra) if source is None else ["--aggregator", "feddf", "--distill-source",
                                                     caches.get(source, source), *extra]
        args = ["--dataset", "fashion-mnist", "--arch", "cnn", "--clients", "20", "--fraction", "0.4",
                "--alpha", str(spec.axes["alpha"]), "--rounds", "12", "--local-epochs", "2", "--augment", "none",
                "--distill-steps", "500", "--eval-every", "50", "--patience", "200", "--seed",
                str(spec.axes["seed"]), *flags]  # experiment_fmnist.train_run's flags
        params = train_command.make_context("train", args).params
        script = TrainConfig(**{k: v for k, v in params.items() if v is not None and k in FIELDS}, out="-")
        ours = TrainConfig(**spec.options, out="-")
        assert ours.resolved() == script.resolved(), spec.name
    assert grid.sweep["target_acc"] == 0.8


def test_the_cifar10_grid_is_valid():
    p = run_cli("sweep", str(ROOT / "benchmarks/grids/cifar10-resnet8.toml"), "--dry-run", "--json", check=True)
    runs = json.loads(p.stdout)
    assert len(runs) == 24 and {r["options"]["arch"] for r in runs} == {"resnet8"}
