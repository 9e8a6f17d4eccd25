"""The no-traceback walk: the real `feddf` CLI (a subprocess per case) fed bad input — non-finite and out-of-range
numbers, 64-bit overflows, mistyped TOML, unwritable paths, malformed files, corrupt caches, broken torchrun
environments — must answer with exit 1 and exactly one `Error: ...` line that names the bad value, never a traceback.
FEDDF_DEBUG=1 keeps real tracebacks available for bug reports."""
import shutil
import socket

import h5py
import numpy as np
import pytest

from tests.conftest import run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A folder of bad (and a few good) inputs, made once for the whole walk."""
    from feddf.cache.writer import CacheWriter

    d = tmp_path_factory.mktemp("bad-inputs")
    with CacheWriter(d / "good.h5", n=20, channels=1, resolution=28, attrs={"kind": "generated", "generator": "x"},
                     num_labels=10, compression="lzf") as w:
        w.append(np.random.default_rng(0).integers(0, 256, (20, 1, 28, 28), dtype=np.uint8), np.arange(20) % 10)
        w.finish()
    shutil.copy(d / "good.h5", d / "badlabel.h5")
    with h5py.File(d / "badlabel.h5", "r+") as f:  # one label beyond the 10 declared classes
        labels = f["labels"][:]
        labels[3] = 57
        f["labels"][:] = labels
    shutil.copy(d / "good.h5", d / "zero.h5")
    with h5py.File(d / "zero.h5", "r+") as f:  # "complete", but 0 committed images
        f["committed"][()] = np.int64(0)
    shutil.copy(d / "good.h5", d / "flipped.h5")
    with h5py.File(d / "good.h5", "r") as f:
        off = f["images"].id.get_chunk_info(0).byte_offset
    raw = bytearray((d / "flipped.h5").read_bytes())
    raw[off + 10] ^= 0xFF  # a corrupt compressed chunk: the lzf filter / fletcher32 checksum fails on read
    (d / "flipped.h5").write_bytes(bytes(raw))
    (d / "notacache.h5").write_bytes(b"hello, not HDF5")
    (d / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (d / "afile").write_text("a file, not a folder")
    (d / "bool.toml").write_text('source-resize = "false"\n')
    (d / "type.toml").write_text('clients = "many"\n')
    (d / "table.toml").write_text("train = 5\n")
    (d / "nan.toml").write_text("local-lr = nan\n")
    (d / "junk.pt").write_bytes(b"not a checkpoint at all")
    run = d / "badrun"
    run.mkdir()
    (run / "config.json").write_text('{"dataset": "fashion-mnist", "archs": ["cnn"], "aggregator": "fedavg"}')
    (run / "metrics.jsonl").write_text('{"round": 1, "acc": {"cnn": {"fedavg": "high"}}}\n')
    run2 = d / "badround"
    shutil.copytree(run, run2)
    (run2 / "metrics.jsonl").write_text('{"round": "one", "acc": {"cnn": 0.5}}\n')
    run3 = d / "binrun"
    shutil.copytree(run, run3)
    (run3 / "metrics.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    return d


GEN = ["gen", "--generator", "dcgan", "--random-weights", "--n", "4", "--quiet"]
TRAIN = ["train", "--aggregator", "fedavg", "--arch", "cnn", "--quiet"]
BIG = str(2**64)

# (id, argv, extra env, text the one Error line must contain); argv/env may use {d} (the files folder), {port}
CASES = [
    ("train-local-lr-inf", [*TRAIN, "--local-lr", "inf"], {}, "--local-lr inf"),
    ("train-weight-decay-nan", [*TRAIN, "--weight-decay", "nan"], {}, "--weight-decay nan"),
    ("train-prox-mu-nan", [*TRAIN, "--prox-mu", "nan"], {}, "--prox-mu nan"),
    ("train-seed-2^64", [*TRAIN, "--seed", BIG], {}, BIG),
    ("train-toml-string-bool", [*TRAIN, "--config", "{d}/bool.toml"], {}, "'false'"),
    ("train-toml-wrong-type", [*TRAIN, "--config", "{d}/type.toml"], {}, "clients"),
    ("train-toml-not-a-table", [*TRAIN, "--config", "{d}/table.toml"], {}, "table.toml"),
    ("train-toml-nan", [*TRAIN, "--config", "{d}/nan.toml"], {}, "--local-lr nan"),
    ("train-toml-binary", [*TRAIN, "--config", "{d}/binary.bin"], {}, "binary.bin"),
    ("train-out-under-a-file", [*TRAIN, "--out", "{d}/afile/run"], {}, "afile/run"),
    ("train-out-foreign", [*TRAIN, "--out", "{d}/badrun"], {}, "not a feddf train run"),
    ("gan-train-lr-inf", ["gan-train", "--lr", "inf", "--out", "{d}/gt", "--quiet"], {}, "--lr inf"),
    ("gen-n-2^64", ["gen", "--generator", "dcgan", "--random-weights", "--n", BIG], {}, BIG),
    ("gen-seed-2^63", [*GEN, "--seed", str(2**63)], {}, str(2**63)),
    ("gen-seed-negative", [*GEN, "--seed", "-1"], {}, "--seed -1"),
    ("gen-truncation-nan", [*GEN, "--truncation", "nan"], {}, "--truncation nan"),
    ("gen-world-size-without-rank", [*GEN, "--out", "{d}/w.h5"], {"WORLD_SIZE": "2"}, "RANK"),
    ("gen-world-size-not-int", [*GEN, "--out", "{d}/w.h5"], {"WORLD_SIZE": "two"}, "'two'"),
    ("gen-peer-never-comes", [*GEN, "--out", "{d}/w.h5"],
     {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "{port}",
      "FEDDF_RENDEZVOUS_TIMEOUT": "1"}, "{port}"),
    ("gen-rank0-peers-never-come", [*GEN, "--out", "{d}/w.h5"],
     {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "{port}",
      "FEDDF_RENDEZVOUS_TIMEOUT": "1"}, "did not join within 1 s"),
    ("gen-checkpoint-junk", ["gen", "--generator", "dcgan", "--checkpoint", "{d}/junk.pt", "--n", "4", "--quiet",
                             "--out", "{d}/j.h5"], {}, "junk.pt"),
    ("gen-out-under-a-file", [*GEN, "--out", "{d}/afile/x.h5"], {}, "afile"),
    ("audit-label-out-of-range", ["audit", "{d}/badlabel.h5", "--out", "{d}/rep"], {}, "57"),
    ("audit-zero-images", ["audit", "{d}/zero.h5", "--out", "{d}/rep"], {}, "0 committed images"),
    ("audit-out-under-a-file", ["audit", "{d}/good.h5", "--out", "{d}/afile/rep"], {}, "afile/rep"),
    ("audit-labeler-junk", ["audit", "{d}/good.h5", "--labeler", "{d}/junk.pt", "--out", "{d}/rep"], {}, "junk.pt"),
    ("audit-min-effective-nan", ["audit", "{d}/good.h5", "--min-effective-classes", "nan"], {}, "nan"),
    ("audit-corrupt-chunk", ["audit", "{d}/flipped.h5", "--out", "{d}/rep2"], {},
     "cannot read /images of {d}/flipped.h5"),
    ("preview-corrupt-chunk", ["cache", "preview", "{d}/flipped.h5", "--out", "{d}/p.png"], {},
     "cannot read /images of {d}/flipped.h5"),
    ("preview-out-under-a-file", ["cache", "preview", "{d}/good.h5", "--out", "{d}/afile/p.png"], {}, "afile"),
    ("info-not-a-cache", ["cache", "info", "{d}/notacache.h5"], {}, "notacache.h5"),
    ("compare-metrics-wrong-type", ["compare", "{d}/badrun"], {}, "'high'"),
    ("compare-round-not-int", ["compare", "{d}/badround"], {}, "'one'"),
    ("compare-metrics-binary", ["compare", "{d}/binrun"], {}, "metrics.jsonl"),
    ("compare-target-nan", ["compare", "{d}/badrun", "--target-acc", "nan"], {}, "nan"),
]


@pytest.mark.parametrize("argv, env, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_without_traceback(files, argv, env, expect):
    port = str(_free_port())

    def fill(s: str) -> str:
        return s.replace("{d}", str(files)).replace("{port}", port)

    p = run_cli(*[fill(a) for a in argv], env={k: fill(v) for k, v in env.items()}, timeout=120, cwd=files)
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), p.stderr
    assert fill(expect) in lines[0], lines[0]


def test_feddf_debug_keeps_the_traceback(files):
    p = run_cli("cache", "preview", str(files / "good.h5"), "--out", str(files / "afile" / "p.png"),
                env={"FEDDF_DEBUG": "1"}, timeout=120)
    assert p.returncode == 1 and "Traceback" in p.stderr and "afile" in p.stderr
