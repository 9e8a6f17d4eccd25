"""Values are checked where they live: the config dataclasses (TrainConfig, GenConfig, GanTrainConfig, AuditConfig)
refuse mistyped, non-finite and out-of-range values for every entry point (CLI, TOML, Python); audit refuses labels
outside the declared classes and empty caches; a named real distillation source must be what --cache holds."""
import numpy as np
import pytest

from feddf.errors import FeddfError
from feddf.federated.config import TrainConfig, config_from, load_toml

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("field, value, message", [
    ("local_lr", INF, "--local-lr inf"), ("local_lr", NAN, "--local-lr nan"), ("local_lr", 0.0, "--local-lr 0.0"),
    ("weight_decay", NAN, "--weight-decay nan"), ("weight_decay", -1e-4, "--weight-decay"),
    ("prox_mu", NAN, "--prox-mu nan"), ("prox_mu", -0.1, "--prox-mu -0.1"),
    ("server_momentum", INF, "--server-momentum inf"), ("server_momentum", 1.0, "--server-momentum 1.0"),
    ("local_momentum", NAN, "--local-momentum nan"), ("local_momentum", 1.0, "--local-momentum 1.0"),
    ("distill_lr", INF, "--distill-lr inf"), ("distill_lr", -1e-3, "--distill-lr"),
    ("temperature", NAN, "--temperature nan"), ("temperature", 0.0, "--temperature 0.0"),
    ("fraction", NAN, "--fraction nan"), ("fraction", 1.5, "--fraction 1.5"),
    ("val_fraction", NAN, "--val-fraction nan"), ("val_fraction", 1.0, "--val-fraction 1.0"),
    ("alpha", INF, "--alpha inf"), ("alpha", -1.0, "--alpha -1.0"),
    ("seed", 2**63, str(2**63)), ("seed", -1, "--seed -1"), ("train_limit", 2**64, str(2**64)),
    ("clients", 2.0, "expected an integer"), ("clients", True, "expected an integer"),
    ("source_resize", "false", "'false'"), ("drop_worst", "no", "'no'"), ("compile_teachers", 1, "true or false"),
    ("dataset", 3, "expected a string"), ("archs", "cnn", "a list of strings"), ("local_lr", "0.1", "a number"),
])
def test_train_config_refuses_bad_values(field, value, message):
    with pytest.raises(FeddfError) as e:
        TrainConfig(**{field: value}).resolved()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_train_config_accepts_ints_for_floats_and_records_floats():
    c = TrainConfig(alpha=1, local_lr=1, prox_mu=0, seed=2**63 - 1).resolved()
    assert c.alpha == 1.0 and isinstance(c.alpha, float) and isinstance(c.local_lr, float) and c.prox_mu == 0.0


def test_toml_booleans_and_types(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('source-resize = "false"\n')
    with pytest.raises(FeddfError, match=r"--source-resize \(config key source_resize\) = 'false' is a str: "
                                         r"expected true or false"):
        config_from(load_toml(p), {}).resolved()
    p.write_text("[train]\nsource-resize = false\ndrop-worst = true\nalpha = 1\n")
    c = config_from(load_toml(p), {}).resolved()
    assert c.source_resize is False and c.drop_worst is True and c.alpha == 1.0
    p.write_text("local-lr = inf\n")
    with pytest.raises(FeddfError, match="--local-lr inf: must be a finite number"):
        config_from(load_toml(p), {}).resolved()
    p.write_text("rounds = [1, 2]\n")
    with pytest.raises(FeddfError, match=r"--rounds \(config key rounds\) = \[1, 2\] is a list: expected an integer"):
        config_from(load_toml(p), {}).resolved()
    p.write_text("seed = 1979-05-27\n")
    with pytest.raises(FeddfError, match=r"--seed \(config key seed\) = datetime.date\(1979, 5, 27\) is a date"):
        config_from(load_toml(p), {}).resolved()
    p.write_text("train = 5\n")
    with pytest.raises(FeddfError, match="must be a table"):
        load_toml(p)
    p.write_bytes(b"\xff\xfe binary")
    with pytest.raises(FeddfError, match="cannot read it as text"):
        load_toml(p)


@pytest.mark.parametrize("kw, message", [
    ({"truncation": NAN}, "--truncation nan"), ({"truncation": INF}, "--truncation inf"),
    ({"n": 2**64}, str(2**64)), ({"n": True}, "expected an integer"), ({"seed": 2**63}, str(2**63)),
    ({"seed": -1}, "--seed -1"), ({"batch_size": 0}, "--batch-size 0"),
])
def test_gen_config_refuses_bad_values(kw, message):
    from feddf.generators.sample import GenConfig, validate

    with pytest.raises(FeddfError) as e:
        validate(GenConfig(**{"generator": "dcgan", "n": 4, **kw}))
    assert message in str(e.value)


def test_seeds_at_and_beyond_2_63_would_alias_so_they_are_refused():
    from feddf.generators.base import stream_key
    from feddf.generators.sample import GenConfig, validate

    assert stream_key(2**63 + 5, 0) == stream_key(5, 0)  # why: the noise key keeps 63 bits of the seed
    validate(GenConfig("dcgan", 4, seed=2**63 - 1))
    with pytest.raises(FeddfError, match="alias"):
        validate(GenConfig("dcgan", 4, seed=2**63 + 5))


@pytest.mark.parametrize("kw, message", [
    ({"lr": INF}, "--lr inf"), ({"lr": NAN}, "--lr nan"), ({"lr": 0.0}, "--lr 0.0"), ({"beta1": NAN}, "--beta1 nan"),
    ({"beta1": 1.0}, "--beta1 1.0"), ({"seed": 2**63}, str(2**63)), ({"epochs": 1.5}, "expected an integer"),
])
def test_gan_train_config_refuses_bad_values(kw, message):
    from feddf.generators.train_dcgan import GanTrainConfig

    with pytest.raises(FeddfError) as e:
        GanTrainConfig(**kw).validate()
    assert message in str(e.value)


def test_class_file_that_is_binary_is_one_line(tmp_path):
    from feddf.generators.classes import parse_classes

    (tmp_path / "ids.bin").write_bytes(bytes(range(256)))
    with pytest.raises(FeddfError, match="is not text"):
        parse_classes(f"@{tmp_path / 'ids.bin'}", 1000)


def _cache(path, labels, kind="generated", **attrs):
    from feddf.cache.writer import CacheWriter

    n = len(labels)
    with CacheWriter(path, n=n, channels=1, resolution=8, attrs={"kind": kind, **attrs}, num_labels=10) as w:
        w.append(np.zeros((n, 1, 8, 8), np.uint8), np.asarray(labels))
        w.finish()
    return path


def test_audit_refuses_labels_outside_the_declared_classes_and_empty_caches(tmp_path):
    import h5py

    from feddf.audit.run import AuditConfig, run_audit
    from feddf.audit.sources import open_source

    p = _cache(tmp_path / "c.h5", np.arange(12) % 10, generator="x")
    src = open_source(p)
    assert src.label_space == 10
    src.close()
    with h5py.File(p, "r+") as f:
        lab = f["labels"][:]
        lab[[2, 5]] = [57, -3]
        f["labels"][:] = lab
    with pytest.raises(FeddfError, match=r"c\.h5 is inconsistent: /labels has 2 label\(s\) outside -1\.\.9 for 10 "
                                         r"classes \(first: image 2 has label 57\)"):
        open_source(p)  # the check every reader of a cache shares with `cache verify`
    z = _cache(tmp_path / "z.h5", np.arange(4) % 10, generator="x")
    with h5py.File(z, "r+") as f:
        f["committed"][()] = 0
    with pytest.raises(FeddfError, match="marked complete but holds 0 committed images"):
        run_audit(AuditConfig(sources=[str(z)]), progress=False)
    for kw, msg in (({"min_effective_classes": NAN}, "--min-effective-classes nan"),
                    ({"low_confidence": INF}, "--low-confidence inf"), ({"seed": 2**63}, str(2**63))):
        with pytest.raises(FeddfError, match=msg):
            run_audit(AuditConfig(sources=[str(p)], **kw), progress=False)


def test_a_named_real_source_must_be_what_the_cache_holds(tmp_path):
    from feddf.federated.sources import REAL_SOURCES, check_holds, resolve_source

    spec = REAL_SOURCES["fashion-mnist"]
    gan = _cache(tmp_path / "gan.h5", np.arange(8) % 10, generator="dcgan")
    with pytest.raises(FeddfError, match=r"needs an import of fashion-mnist:test\[:5000\], but .*gan.h5 is a "
                                         r"generated cache \(dcgan\)"):
        resolve_source("fashion-mnist", 1, 8, cache=str(gan), progress=False)
    other = _cache(tmp_path / "other.h5", np.arange(8) % 10, kind="imported", source="fashion-mnist:test[5000:]")
    with pytest.raises(FeddfError, match=r"is an imported cache of fashion-mnist:test\[5000:\]"):
        check_holds(other, "fashion-mnist", spec)
    part = _cache(tmp_path / "part.h5", np.arange(8) % 10, kind="imported", source=spec, limit=8)
    with pytest.raises(FeddfError, match="only the first 8 images"):
        check_holds(part, "fashion-mnist", spec)
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(FeddfError, match="is not a feddf cache"):
        check_holds(tmp_path / "junk.h5", "fashion-mnist", spec)
    ok = _cache(tmp_path / "ok.h5", np.arange(8) % 10, kind="imported", source=spec)
    src = resolve_source("fashion-mnist", 1, 8, cache=str(ok), progress=False)
    assert src.name == "fashion-mnist" and src.n == 8 and src.describe()["cache_kind"] == "imported"
