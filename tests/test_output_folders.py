"""Output folders (feddf/runfolder.py: claim_output): `feddf compare --out`, `feddf audit --out` and
`feddf flower certs --out` write only into a new or empty folder or their own earlier output (replaced with --force),
never into anyone else's folder, and `gen --out LINK --force` never replaces a symbolic link (real subprocesses).

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_output_folders.py
"""
from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner

from feddf.cli import main
from feddf.runfolder import LOCK, MARKER, STAGING
from tests.conftest import run_cli
from tests.test_audit_fixtures import make_cache, make_run
from tests.test_run_folder import foreign_folder, one_error_line, refused, snapshot


def ok(*args) -> None:
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == 0, (res.output, res.exception)


@pytest.fixture()
def run_dir(tmp_path):
    return make_run(tmp_path / "fedavg", {"cnn": [(0.30, None), (0.55, None)]}, aggregator="fedavg",
                    distill_source=None)


@pytest.fixture()
def caches(tmp_path):
    make_cache(tmp_path / "a.h5", n=40, seed=1)
    make_cache(tmp_path / "b.h5", n=40, seed=2)
    return tmp_path / "a.h5", tmp_path / "b.h5"


def test_compare_and_audit_refuse_a_foreign_folder_and_leave_it_byte_for_byte(tmp_path, run_dir, caches):
    d = foreign_folder(tmp_path)
    before = snapshot(d)
    line = one_error_line(run_cli("compare", str(run_dir), "--out", str(d)))  # the real process
    assert "not a feddf compare folder" in line and str(d) in line
    line = one_error_line(run_cli("audit", str(caches[0]), "--out", str(d), "--force", "-q"))
    assert "not a feddf audit folder" in line
    assert "not a feddf compare folder" in refused("compare", str(run_dir), "--out", str(d), "--force")
    assert snapshot(d) == before and not (d / MARKER).exists() and not (d / LOCK).exists()
    # a folder of another feddf kind (a train run, an audit report) is not a compare report either
    (tmp_path / "run" / MARKER).parent.mkdir()
    (tmp_path / "run" / MARKER).write_text(json.dumps({"kind": "train", "run_id": "x"}))
    assert "holds a feddf train folder" in refused("compare", str(run_dir), "--out", str(tmp_path / "run"), "--force")
    ok("audit", str(caches[0]), "--out", str(tmp_path / "aud"), "-q")
    before = snapshot(tmp_path / "aud")
    line = refused("compare", str(run_dir), "--out", str(tmp_path / "aud"), "--force")
    assert "holds a feddf audit folder, not compare output" in line
    assert snapshot(tmp_path / "aud") == before


def test_an_earlier_report_is_replaced_only_with_force_and_the_users_own_files_stay(tmp_path, run_dir, caches):
    out = tmp_path / "rep"
    run_cli("compare", str(run_dir), "--out", str(out), check=True)
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == "compare" and "report.json" in marker["outputs"] and not (out / LOCK).exists()
    (out / "my-notes.txt").write_text("keep me")
    before = snapshot(out)
    line = one_error_line(run_cli("compare", str(run_dir), "--target-acc", "0.5", "--out", str(out)))
    assert "holds earlier feddf compare output: pass --force" in line
    assert snapshot(out) == before
    run_cli("compare", str(run_dir), "--target-acc", "0.5", "--out", str(out), "--force", check=True)
    assert json.loads((out / "report.json").read_text())["target_acc"] == 0.5
    assert (out / "my-notes.txt").read_text() == "keep me"
    assert json.loads((out / MARKER).read_text())["run_id"] == marker["run_id"]
    assert not [p for p in out.iterdir() if p.name.startswith(STAGING)]

    # audit: a replacement removes the earlier report's outputs it does not rewrite (figures named by source)
    rep = tmp_path / "audit"
    ok("audit", str(caches[0]), "--out", str(rep), "-q")
    old_figures = {p.name for p in (rep / "figures").iterdir()}
    assert old_figures and all("a" in n for n in old_figures)
    (rep / "figures" / "mine.png").write_bytes(b"not feddf's")
    assert "pass --force" in refused("audit", str(caches[1]), "--out", str(rep), "-q")
    ok("audit", str(caches[1]), "--out", str(rep), "-q", "--force")
    names = {p.name for p in (rep / "figures").iterdir()}
    assert not names & old_figures and "mine.png" in names
    assert json.loads((rep / "report.json").read_text())["sources"][0]["name"] == "b"


def test_a_report_folder_from_before_markers_is_replaced_with_force(tmp_path, run_dir):
    out = tmp_path / "old-report"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"versions": {"feddf": "0.1"}, "runs": []}))
    (out / "report.md").write_text("# old")
    (out / "report.html").write_text("<p>old</p>")
    before = snapshot(out)
    assert "pass --force" in refused("compare", str(run_dir), "--out", str(out))
    assert snapshot(out) == before
    ok("compare", str(run_dir), "--out", str(out), "--force")
    assert (out / "report.md").read_text() != "# old" and (out / MARKER).is_file()


def test_a_failed_compare_leaves_no_folder_and_a_leftover_staging_folder_is_not_foreign(tmp_path, run_dir):
    out = tmp_path / "never"
    assert "does not exist" in refused("compare", str(tmp_path / "nope"), "--out", str(out))
    assert not out.exists()
    (out / f"{STAGING}killed").mkdir(parents=True)  # what a publish killed with kill -9 leaves
    (out / f"{STAGING}killed" / "report.md").write_text("half")
    ok("compare", str(run_dir), "--out", str(out))
    assert not (out / f"{STAGING}killed").exists() and (out / "report.html").is_file()


def test_help_names_force():
    for cmd in ("compare", "audit"):
        p = CliRunner().invoke(main, [cmd, "--help"])
        assert "--force" in p.output and "earlier" in p.output


# ---------------------------------------------------------------------------------------- feddf flower certs --out
CERT_FILES = {"ca.crt", "ca.key", "superlink.crt", "superlink.key", "node-0", "node-0.pub"}


def test_certs_refuse_a_foreign_folder_keep_its_mode_and_replace_their_own_only_with_force(tmp_path):
    d = foreign_folder(tmp_path)
    os.chmod(d, 0o755)
    before = snapshot(d)
    line = one_error_line(run_cli("flower", "certs", "--out", str(d), "--nodes", "1"))
    assert "not a feddf flower-certs folder" in line
    assert "not a feddf flower-certs folder" in refused("flower", "certs", "--out", str(d), "--nodes", "1", "--force")
    assert snapshot(d) == before

    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    os.chmod(empty, 0o755)
    ok("flower", "certs", "--out", str(empty), "--nodes", "1")
    assert stat.S_IMODE(empty.stat().st_mode) == 0o755  # an existing folder keeps its mode
    assert {p.name for p in empty.iterdir()} == CERT_FILES | {MARKER}
    assert stat.S_IMODE((empty / "ca.key").stat().st_mode) == 0o600

    new = tmp_path / "new" / "certs"
    ok("flower", "certs", "--out", str(new), "--nodes", "2")
    assert stat.S_IMODE(new.stat().st_mode) == 0o700  # a folder made here is private
    before = snapshot(new)
    assert "pass --force" in refused("flower", "certs", "--out", str(new), "--nodes", "2")
    assert snapshot(new) == before
    ok("flower", "certs", "--out", str(new), "--nodes", "1", "--force")
    assert {p.name for p in new.iterdir()} == CERT_FILES | {MARKER}  # node-1 of the old set is gone
    assert (new / "ca.crt").read_bytes() != before["ca.crt"][0]
    assert all(stat.S_IMODE((new / n).stat().st_mode) == 0o600 for n in ("ca.key", "superlink.key", "node-0"))


@pytest.mark.parametrize("args, needle", [
    (["--days", "0"], "--days 0"), (["--days", "-5"], "--days -5"), (["--days", "100000000"], "--days 100000000"),
    (["--host", ""], "--host ''"), (["--host", "bad host"], "--host 'bad host'"), (["--nodes", "0"], "--nodes 0"),
    (["--nodes", "100000000"], "--nodes 100000000")])
def test_certs_bad_values_are_one_line_and_leave_nothing(tmp_path, args, needle):
    out = tmp_path / "c"
    line = one_error_line(run_cli("flower", "certs", "--out", str(out), "--nodes", "1", *args))
    assert needle in line
    assert not out.exists()
    empty = tmp_path / "e"
    empty.mkdir()
    assert needle in refused("flower", "certs", "--out", str(empty), "--nodes", "1", *args)
    assert list(empty.iterdir()) == []
    ok("flower", "certs", "--out", str(out), "--nodes", "1")  # the corrected rerun is not refused


def test_a_certs_run_failing_mid_way_leaves_nothing_of_its_own(tmp_path, monkeypatch):
    from feddf.errors import FeddfError
    from feddf.flower import security

    def boom(path):
        raise FeddfError("node key failed")

    monkeypatch.setattr(security, "make_node_key", boom)
    out = tmp_path / "c"
    assert "node key failed" in refused("flower", "certs", "--out", str(out), "--nodes", "1")
    assert not out.exists()
    with pytest.raises(FeddfError, match="node key failed"):
        security.generate(tmp_path / "g", 1)
    assert not (tmp_path / "g").exists()


# ------------------------------------------------------------------------------------------- gen --out LINK --force
def test_a_symlink_out_is_never_replaced(tmp_path):
    from tests.conftest import random_dcgan_checkpoint
    from tests.test_force_replace import gen, sha

    ckpt = random_dcgan_checkpoint(tmp_path / "g.pth", nc=1)
    real, link = tmp_path / "real.h5", tmp_path / "link.h5"
    run_cli(*gen(ckpt, real, 20), check=True)
    link.symlink_to(real)
    before, listing = sha(real), sorted(p.name for p in tmp_path.iterdir())
    line = one_error_line(run_cli(*gen(ckpt, link, 20, "--force", "--seed", "1")))
    assert f"--out {link} is a symbolic link (to {real})" in line and "never replaces a link" in line
    line = refused("cache", "import", "synthetic:test[:20]", "--out", str(link), "--force", "--quiet")
    assert "never replaces a link" in line
    assert link.is_symlink() and sha(real) == before and sorted(p.name for p in tmp_path.iterdir()) == listing
    p = run_cli(*gen(ckpt, link, 20), check=True)  # the same config through the link: found complete, untouched
    assert json.loads(p.stdout)["generated"] == 0 and link.is_symlink() and sha(real) == before
    dangling = tmp_path / "dangling.h5"
    dangling.symlink_to(tmp_path / "missing.h5")
    assert "which does not exist" in refused(*gen(ckpt, dangling, 20))
    assert dangling.is_symlink() and not (tmp_path / "missing.h5").exists()
