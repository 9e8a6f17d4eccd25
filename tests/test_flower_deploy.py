"""Flower deployments that let no one in and lose no rounds (docs/flower.md), as real processes on 127.0.0.1:
TLS + SuperNode authentication refuse an unregistered key, a plaintext node and a node that trusts another CA while
the run goes on; no private key reaches the run folder or a log; a run whose ServerApp or SuperLink was killed, or
that finished 1 round, resumes to 3 rounds equal (==) to `feddf train --rounds 3`; `feddf flower server` runs with
the user's own certificate and keys and SuperNodes started apart from it; `feddf flower simulate` equals
`feddf train`.
"""
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from tests.conftest import run_cli  # noqa: E402
from tests.test_flower import ENV, leftovers, metrics  # noqa: E402

TINY = ["--dataset", "fashion-mnist", "--clients", "2", "--fraction", "1", "--local-epochs", "1",
        "--train-limit", "200", "--test-limit", "200", "--distill-steps", "6", "--eval-every", "3",
        "--eval-batch-size", "200", "--arch", "cnn", "--distill-source", "noise", "--quiet"]
FLOWER_ONLY = {"replied", "missing", "failed", "node_seconds", "received"}


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in FLOWER_ONLY and not k.endswith("_seconds")} for r in rows]


@pytest.fixture(scope="module")
def train3(tmp_path_factory, fmnist_available):
    out = tmp_path_factory.mktemp("train") / "run"
    run_cli("train", *TINY, "--rounds", "3", "--out", str(out), check=True, env=ENV)
    return out


def assert_same_run(run: Path, ref: Path, rounds: int = 3) -> None:
    """metrics (all but timings and Flower's own fields), the saved models and the checkpoint's tensors: ==."""
    from feddf.models import load_classifier

    assert [r["round"] for r in metrics(run)] == list(range(1, rounds + 1))
    assert comparable(metrics(run)) == comparable(metrics(ref))
    a, b = load_classifier(run / "models" / "cnn.pt"), load_classifier(ref / "models" / "cnn.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    ca, cb = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (run, ref))
    assert ca["round"] == cb["round"] == rounds and ca["metrics"] == metrics(run)
    assert all(torch.equal(ca["server"]["cnn"][k], v) for k, v in cb["server"]["cnn"].items())


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def by_parent(name: str, parent: int) -> int:
    """pid of the live `name` process (flower-superexec, flwr-serverapp) started with --parent-pid `parent`."""
    for f in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = f.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(name in a for a in args[:2]) and "--parent-pid" in args:
            if args[args.index("--parent-pid") + 1] == str(parent):
                return int(f.parent.name)
    raise AssertionError(f"no {name} with --parent-pid {parent}")


def launch_and_kill(args, out: Path, state: Path, rounds: int, target: str, sig: int):
    """Run `feddf ARGS`, wait until metrics.jsonl has `rounds` rows, send `sig` to our SuperLink or ServerApp;
    (the finished process, pids it started)."""
    p = subprocess.Popen([sys.executable, "-m", "feddf", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, **ENV})
    try:
        deadline = time.time() + 500
        while not ((out / "metrics.jsonl").exists() and len(metrics(out)) >= rounds):
            assert p.poll() is None, p.communicate()[1][-2000:]
            if time.time() > deadline:  # a guard against a hung run, not a speed check
                pytest.fail(f"metrics.jsonl of {out} did not reach {rounds} rounds in 500 s")
            time.sleep(0.2)
        link = json.loads((state / "processes.json").read_text())["superlink"]
        os.kill(link if target == "superlink" else by_parent("flwr-serverapp", by_parent("flower-superexec", link)),
                sig)
        stdout, stderr = p.communicate(timeout=300)
    finally:
        if p.poll() is None:  # a failed assertion above: the launcher stops everything it started on SIGTERM
            p.terminate()
            p.communicate(timeout=60)
    pids = list(json.loads((state / "processes.json").read_text()).values())
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr), pids


def test_tls_and_node_auth_refuse_intruders_the_run_goes_on_and_no_private_key_is_written(tmp_path):
    """`local` with the user's own TLS files (as `--ssl-*` gives them); the node keys are made for the run."""
    from feddf.federated.config import TrainConfig
    from feddf.flower import security
    from feddf.flower.launch import LocalFlower, prepare

    os.environ.update(ENV)
    run, state = tmp_path / "run", tmp_path / "state"
    own = security.generate(tmp_path / "own", 0)
    users = security.from_files(own.ca, own.cert, own.key)
    cfg = prepare(TrainConfig(dataset="fashion-mnist", arch="cnn", aggregator="fedavg", clients=2, fraction=1.0,
                              local_epochs=1, train_limit=200, test_limit=200, eval_batch_size=200, rounds=1,
                              progress=False, out=str(run)))
    other = security.generate(tmp_path / "other-ca", 0)          # someone else's CA
    stranger = security.make_node_key(tmp_path / "stranger")     # a key nobody registered
    spare = security.make_node_key(tmp_path / "spare")           # registered, but its node trusts the other CA
    with LocalFlower([None] * 2, state_dir=state, stream=False, secure=users) as fl:
        sec = fl.secure
        assert sec.cert == own.cert and {p.parent for p in sec.node_keys} == {state / "secrets"}
        assert mode(state / "secrets") == 0o700 and all(mode(p) == 0o600 for p in (sec.key, *sec.node_keys))
        private = [p.read_bytes() for p in (sec.key, *sec.node_keys)]
        security.supernode_cmd(fl.flwr, "register", f"{spare}.pub")
        # each claims a partition a real node holds: had the SuperLink let one in, the run would fail its node check
        tls = ["--root-certificates", str(sec.ca)]
        intruders = {"unregistered": fl.start_supernode("unregistered", 0, None,
                                                        [*tls, "--auth-supernode-private-key", str(stranger)]),
                     "plaintext": fl.start_supernode("plaintext", 1, None, ["--insecure"], ("--max-retries", "2")),
                     "other-ca": fl.start_supernode("other-ca", 0, None, ["--root-certificates", str(other.ca),
                                                                          "--auth-supernode-private-key", str(spare)])}
        fl.run(cfg, "flower-deployment")
        codes = {name: p.wait(120) for name, p in intruders.items()}  # each gives up by itself
        nodes = json.loads(fl.flwr("supernode", "ls", "feddf", "--format", "json").stdout)["nodes"]
        pids = [p.pid for p in fl.procs.values()]
    assert pids and not leftovers(pids)
    assert all(c != 0 for c in codes.values()), codes
    logs = {name: (state / f"{name}.log").read_text() for name in intruders}
    assert "Failed to activate SuperNode" in logs["unregistered"]
    assert "No SuperNode found with the given public key" in (state / "superlink.log").read_text()
    assert "Server disconnected" in logs["plaintext"]
    assert "certificate verify failed" in logs["other-ca"]
    # the two real nodes came online and trained; the spare key stayed registered-only
    online = sorted(n["node-id"] for n in nodes if n["status"] == "online")
    assert len(online) == 2 and sorted(n["status"] for n in nodes) == ["online", "online", "registered"]
    assert sorted(json.loads((run / "config.json").read_text())["engine"]["nodes"].values()) == online
    assert [(r["round"], r["replied"], r["missing"]) for r in metrics(run)] == [(1, [0, 1], [])]
    assert "SuperNode authentication is disabled" not in (state / "superlink.log").read_text()
    # the run's node keys are gone with the processes, the user's files are untouched; no private key was ever
    # written to the run folder or a log
    assert not (state / "secrets").exists() and own.key.read_bytes() == private[0]
    body = [ln for key in private for ln in key.splitlines() if len(ln) >= 40 and b"PRIVATE KEY" not in ln]
    assert len(body) >= 9
    for f in [*run.rglob("*"), *state.rglob("*")]:
        if f.is_file():
            data = f.read_bytes()
            assert b"PRIVATE KEY" not in data and not any(ln in data for ln in body), f


def test_local_secure_1_round_resumed_to_3_through_a_killed_serverapp_equals_train(tmp_path, train3):
    run, state = tmp_path / "run", tmp_path / "state"
    args = ["flower", "local", "--secure", "--nodes", "2", *TINY, "--out", str(run), "--state-dir", str(state)]
    p = run_cli(*args, "--rounds", "1", env=ENV, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    pids = list(json.loads((state / "processes.json").read_text()).values())
    again = run_cli(*args, "--rounds", "3", env=ENV)
    assert again.returncode == 1 and "pass --resume" in again.stderr and len(metrics(run)) == 1
    # the ServerApp dies after round 2 (SIGTERM: Flower marks the run failed at once; a SIGKILLed ServerApp is
    # found by Flower's heartbeat a minute later, with the same outcome)
    p, more = launch_and_kill([*args, "--rounds", "3", "--resume"], run, state, 2, "serverapp", signal.SIGTERM)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("Error:")]
    assert p.returncode == 1 and len(errors) == 1 and "--resume continues after round 2" in errors[0], p.stderr
    pids += more
    p = run_cli(*args, "--rounds", "3", "--resume", env=ENV, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    pids += json.loads((state / "processes.json").read_text()).values()
    assert_same_run(run, train3)
    assert not leftovers(pids) and not (state / "secrets").exists()


@pytest.mark.slow  # ~110 s of real processes; the secure local run above covers TLS + resume + equality in CI
def test_server_with_the_users_certificates_survives_a_killed_superlink_and_resumes_equal_to_train(tmp_path, train3):
    """`feddf flower certs` makes the files a user would bring; the SuperNodes are started apart from the server,
    as on other machines, and outlive the SuperLink: they reconnect to the resumed run by themselves."""
    from feddf.flower.launch import free_port

    certs, run, state = tmp_path / "certs", tmp_path / "run", tmp_path / "state"
    run_cli("flower", "certs", "--out", str(certs), "--nodes", "2", check=True)
    assert mode(certs) == 0o700 and all(mode(certs / n) == 0o600 for n in ("ca.key", "superlink.key", "node-0"))
    port = free_port()
    args = ["flower", "server", "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile",
            str(certs / "superlink.crt"), "--ssl-keyfile", str(certs / "superlink.key"), "--node-public-key",
            str(certs / "node-0.pub"), "--node-public-key", str(certs / "node-1.pub"), "--port", str(port), *TINY,
            "--rounds", "3", "--out", str(run), "--state-dir", str(state)]
    home = tmp_path / "node-home"
    home.mkdir()
    env = {**os.environ, **ENV, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    nodes = []
    try:
        for k in range(2):
            nodes.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "flower-supernode"), "--root-certificates", str(certs / "ca.crt"),
                 "--auth-supernode-private-key", str(certs / f"node-{k}"), "--superlink", f"127.0.0.1:{port}",
                 "--port", str(free_port()), "--node-config", f"partition-id={k} num-partitions=2"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True))
        p, pids = launch_and_kill(args, run, state, 1, "superlink", signal.SIGKILL)
        assert p.returncode == 1 and "the SuperLink exited (-9)" in p.stderr, p.stderr[-2000:]
        assert all(n.poll() is None for n in nodes)  # the SuperNodes keep retrying
        p = run_cli(*args, "--resume", env=ENV, timeout=400)
        assert p.returncode == 0, p.stderr[-3000:]
        pids = [*pids, *json.loads((state / "processes.json").read_text()).values()]
    finally:
        for n in nodes:
            os.killpg(n.pid, signal.SIGTERM)  # the node's group: its SuperExec and ClientApps too
        for n in nodes:
            try:
                n.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(n.pid, signal.SIGKILL)
                n.wait()
    assert_same_run(run, train3)
    assert not leftovers([*pids, *(n.pid for n in nodes)])


def test_simulation_equals_feddf_train(tmp_path, fmnist_available):
    sim, ref = tmp_path / "sim", tmp_path / "ref"
    p = run_cli("flower", "simulate", *TINY, "--rounds", "1", "--out", str(sim), "--state-dir",
                str(tmp_path / "state"), env=ENV, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    run_cli("train", *TINY, "--rounds", "1", "--out", str(ref), check=True, env=ENV)
    assert json.loads((sim / "config.json").read_text())["engine"]["name"] == "flower-simulation"
    assert_same_run(sim, ref, rounds=1)
    assert not leftovers(json.loads((tmp_path / "state" / "processes.json").read_text()).values())


def test_users_files_are_checked_in_one_line_and_certs_never_overwrites(tmp_path):
    from feddf.errors import FeddfError
    from feddf.flower.security import from_files, generate

    a, b = generate(tmp_path / "a", 1, keep_ca=True), generate(tmp_path / "b", 1, hosts=["node.example.org"])
    assert from_files(a.ca, a.cert, a.key, public_keys=a.public_keys).cert == a.cert
    for call, message in ((lambda: from_files(b.ca, a.cert, a.key), "is not issued by"),
                          (lambda: from_files(a.ca, a.cert, b.key), "is not the private key of"),
                          (lambda: from_files(a.ca, a.cert, a.key, host="10.1.2.3"), "does not name 10.1.2.3"),
                          (lambda: from_files(a.ca, a.cert, None), "--ssl-keyfile missing"),
                          (lambda: from_files(a.ca, a.ca.with_name("nope"), a.key), "No such file"),
                          (lambda: from_files(a.ca, a.key, a.key), "not a PEM file"),
                          (lambda: from_files(a.ca, a.cert, a.key, public_keys=[a.cert]), "not an OpenSSH EC")):
        with pytest.raises(FeddfError, match=message):
            call()
    assert from_files(b.ca, b.cert, b.key, host="node.example.org").ca == b.ca
    before = {p: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    p = run_cli("flower", "certs", "--out", str(tmp_path / "a"), "--nodes", "2")
    assert p.returncode == 1 and "not a feddf flower-certs folder" in p.stderr and "Traceback" not in p.stderr
    assert {q: q.read_bytes() for q in (tmp_path / "a").iterdir()} == before  # nothing written, nothing replaced


def test_a_resume_with_other_settings_rounds_or_node_archs_is_one_line_before_anything_starts(tmp_path, train3):
    import shutil
    from types import SimpleNamespace

    from feddf.errors import FeddfError
    from feddf.flower.server_app import check_same_archs

    out, state = tmp_path / "run", tmp_path / "state"
    shutil.copytree(train3, out)  # feddf train's checkpoint: the same format the ServerApp writes
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    args = ["flower", "local", "--nodes", "2", *TINY, "--out", str(out), "--state-dir", str(state), "--resume"]
    for extra, message in ((["--rounds", "4", "--alpha", "0.3"], "--resume with different settings"),
                           (["--rounds", "2"], "already completed 3 rounds, more than --rounds 2"),
                           (["--rounds", "4"], "holds a feddf train run, not a flower run")):
        p = run_cli(*args, *extra, env=ENV)
        assert p.returncode == 1 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not state.exists() and {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(FeddfError, match="partition 1 is now arch='resnet8' but the run .* with arch='cnn'"):
        check_same_archs(out, SimpleNamespace(client_arch=["cnn", "resnet8"]))
    check_same_archs(out, SimpleNamespace(client_arch=["cnn", "cnn"]))
