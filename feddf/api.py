"""The Python API: `feddf.gen`, `feddf.train`, `feddf.audit` — the CLI commands as functions (docs/api.md).

    python -c "import feddf; print(feddf.train(arch='cnn', distill_source='noise', clients=2, rounds=1, \
local_epochs=1, train_limit=200, test_limit=100, distill_steps=5, eval_every=5, out='/tmp/feddf-api')['final']['acc'])"

Each function takes the command's options as keyword arguments (the fields of its config dataclass: `TrainConfig`,
`GenConfig`, `AuditConfig`) and/or a config instance, runs exactly what the command runs, and returns the summary
the command prints with `--json`. The CLI modules call these functions, so this file (with feddf/audit/entry.py for
`audit`, which the callable package `feddf.audit` runs without importing upward) is where options become configs.
Errors are `feddf.FeddfError` (one line naming the bad value and the fix).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from feddf.audit.entry import audit, default_audit_out  # noqa: F401 (feddf.api.audit: the audit command)
from feddf.checks import check_options, merge_options
from feddf.errors import FeddfError


# ---------------------------------------------------------------------------------------------------- train
def train_config(config=None, *, config_file: str | None = None, **options: Any):
    """Options of `feddf train` -> a TrainConfig. Precedence (lowest first): the run's saved config.json (with
    resume=True and out=...), config_file (TOML, or a run's config.json: a replay), `config`, then the options given
    (None = not given)."""
    from feddf.federated.config import TrainConfig, config_from, load_config_file

    given = {k: v for k, v in options.items() if v is not None}
    check_options(TrainConfig, given, "train")
    if isinstance(given.get("archs"), str):  # "resnet8,mypkg.nets:build" as on the command line
        given["archs"] = [a.strip() for a in given["archs"].split(",") if a.strip()]
    if config is not None and not isinstance(config, TrainConfig):
        raise FeddfError(f"feddf.train(): config must be a TrainConfig, not a {type(config).__name__}")
    explicit = dataclasses.asdict(config) if config is not None else {}
    merged = {**explicit, **given}
    base = _saved_config(merged["out"]) if merged.get("resume") and merged.get("out") else {}
    return config_from({**base, **(load_config_file(config_file) if config_file else {}), **explicit}, given)


def _saved_config(out: str) -> dict:
    """resume=True, out=DIR: the run's own settings are the base, so `feddf train --out DIR --resume` is enough."""
    import json

    from feddf.federated.config import FIELDS

    try:
        saved = json.loads((Path(out) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict):  # a config.json that is not a JSON object: not ours, the run-folder claim says so
        return {}
    return {k: v for k, v in saved.items() if k in FIELDS and k not in ("resume", "progress")}


def train(config=None, *, config_file: str | None = None, log: Callable[[str], None] | None = print,
          on_round: Callable[[dict], None] | None = None, **options: Any) -> dict:
    """Run (or resume) `feddf train`; returns its summary {"out", "rounds", "final": last metrics.jsonl row}.

    `feddf.train(arch="mypkg.nets:build", dataset="folder:/data/xray", rounds=5)`; log=None prints nothing;
    on_round(row) is called with each round's metrics dict (its metrics.jsonl row) once the round is saved."""
    cfg = train_config(config, config_file=config_file, **options)
    cfg.check_values()  # bad numbers fail here, before torch, any data or any model is loaded
    from feddf.federated.runner import run

    return run(cfg, log=log or (lambda s: None), on_round=on_round)


# ---------------------------------------------------------------------------------------------------- gen
def gen(config=None, *, force: bool = False, progress: bool = True, **options: Any) -> dict:
    """Run `feddf gen` (sample a generator into a resumable cache); returns its summary (out, n, img_per_s, ...).

    `feddf.gen(generator="dcgan-fashion-mnist", n=1000, out="cache/d.h5")`."""
    from feddf.generators.sample import GenConfig, run_gen

    cfg = merge_options(GenConfig, config, options, "gen")
    return run_gen(cfg, force=force, progress=progress)
