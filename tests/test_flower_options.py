"""The Flower options of `feddf flower simulate|local|server` (feddf/flower/options.py: check_flower_options) are
checked before anything starts: a bad --min-replies, --node-timeout, --round-timeout, --poll-interval or --nodes is
one line, exit 1, no SuperLink, no state dir, no run folder.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_flower_options.py
"""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from feddf.cli import main
from tests.conftest import run_cli
from tests.test_run_folder import one_error_line, refused

pytest.importorskip("flwr")

BASE = ["--dataset", "fashion-mnist", "--clients", "2", "--fraction", "1", "--rounds", "1", "--aggregator", "fedavg"]
BAD = [
    (["--min-replies", "0"], "--min-replies 0: must be >= 1"),
    (["--min-replies", "-3"], "--min-replies -3"),
    (["--min-replies", "3"], "--min-replies 3: must be in [1, 2]"),  # a round samples 2 clients: never met
    (["--node-timeout", "nan"], "--node-timeout nan"),
    (["--node-timeout", "-1"], "--node-timeout -1.0: must be in (0, 604800]"),
    (["--node-timeout", "inf"], "--node-timeout inf"),
    (["--round-timeout", "0"], "--round-timeout 0.0"),
    (["--round-timeout", "1e300"], "--round-timeout 1e+300"),
    (["--poll-interval", "inf"], "--poll-interval inf"),
    (["--poll-interval", "0"], "--poll-interval 0.0: must be in (0, 60]"),
    (["--poll-interval", "nan"], "--poll-interval nan"),
]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    from feddf.flower.security import generate

    return generate(tmp_path_factory.mktemp("tls") / "certs", 2)


def commands(tls):
    server = ["server", "--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile",
              str(tls.key), *(a for p in tls.public_keys for a in ("--node-public-key", str(p)))]
    return {"local": ["local"], "simulate": ["simulate"], "server": server}


@pytest.mark.parametrize("bad, needle", BAD, ids=[" ".join(b) for b, _ in BAD])
def test_bad_flower_options_are_one_line_before_anything_starts(tmp_path, tls, bad, needle):
    for name, cmd in commands(tls).items():
        out, state = tmp_path / f"run-{name}", tmp_path / f"state-{name}"
        line = refused("flower", *cmd, *BASE, *bad, "--out", str(out), "--state-dir", str(state))
        assert needle in line, (name, line)
        assert not out.exists() and not state.exists()


def test_the_real_process_refuses_at_once_and_local_bounds_its_supernodes(tmp_path):
    out, state = tmp_path / "run", tmp_path / "state"
    for bad, needle in ((["--min-replies", "0"], "--min-replies 0"), (["--node-timeout", "nan"], "nan"),
                        (["--clients", "100000"], "--nodes 100000: must be in [1, 1000]")):
        line = one_error_line(run_cli("flower", "local", *BASE, *bad, "--out", str(out), "--state-dir", str(state),
                                      timeout=120))
        assert needle in line
    assert "--nodes 5000" in refused("flower", "local", *BASE[2:], "--nodes", "5000", "--out", str(out))
    assert not out.exists() and not state.exists()


def test_the_server_app_and_the_python_launcher_share_the_check():
    from types import SimpleNamespace

    from feddf.errors import FeddfError
    from feddf.flower.options import check_flower_options

    cfg = SimpleNamespace(clients=10, fraction=0.4)
    check_flower_options(4, 120, 3600, 0.2, cfg)
    for args in ((5, 120, 3600, 0.2), (1.5, 120, 3600, 0.2), (True, 120, 3600, 0.2), (1, float("nan"), 3600, 0.2),
                 (1, 120, -1, 0.2), (1, 120, 3600, 61)):
        with pytest.raises(FeddfError):
            check_flower_options(*args, cfg)


def test_help_states_the_ranges():
    p = CliRunner().invoke(main, ["flower", "local", "--help"])
    assert "at most 7 days" in p.output and "at most 60" in p.output
