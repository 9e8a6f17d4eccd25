"""`--classes` specs and the balanced, seeded class of every image index (a pure function of (i, classes, seed)).

    python -c "from feddf.generators.classes import parse_classes, assign; p = parse_classes('cifar10'); \
print(assign(p, range(10), seed=0))"

Specs: `all` (ImageNet 0..999), ids and ranges `1,5,10-19`, a file of ids (`@ids.txt` or a path: ids/ranges separated
by commas or whitespace, `#` comments), or a target map `cifar10` / `cifar100` (class_maps.json; built by
build_class_maps.py from torchvision's ImageNet names).

Balance: images are dealt in rounds; round r = indices [rK, (r+1)K) holds every one of the K classes exactly once, in
an order shuffled by (seed, r). So any prefix (a resumed or partial cache) has counts within 1 of each other, and the
class of image i needs only (i, classes, seed). With a target map the deal is two-level: rounds over the mapped
target classes (so CIFAR classes are balanced, not the ImageNet classes: dog has 118 ImageNet classes, frog 3), then
the t-th target's r-th image cycles through that target's ImageNet classes in shuffled rounds of their own.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feddf.errors import FeddfError
from feddf.generators.base import counter_uniform, stream_key

MAPS_FILE = Path(__file__).with_name("class_maps.json")
NUM_IMAGENET = 1000


@functools.lru_cache(maxsize=1)
def class_maps() -> dict:
    return json.loads(MAPS_FILE.read_text())


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names as torchvision ships them (index = class id)."""
    return list(class_maps()["imagenet_categories"])


@dataclass(frozen=True)
class ClassPlan:
    spec: str                       # as given by the user
    ids: tuple[int, ...]            # conditioning classes dealt over (ImageNet ids)
    target_names: tuple[str, ...] = ()            # non-empty for a target map (all targets, mapped or not)
    members: tuple[tuple[int, ...], ...] = ()     # per target: its ImageNet ids (empty if unmapped)

    @property
    def num_targets(self) -> int:
        return len(self.target_names)

    def describe(self) -> dict:
        """What the cache identity keeps: the resolved classes, not the spelling or file path."""
        if self.target_names:
            return {"map": self.spec, "members": [list(m) for m in self.members]}
        return {"ids": list(self.ids)}


def _parse_ids(text: str, where: str, num_classes: int) -> list[int]:
    ids: list[int] = []
    for tok in re.split(r"[,\s]+", text.strip()):
        if not tok:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", tok)
        if not m:
            raise FeddfError(f"--classes: {tok!r} in {where} is not a class id or a range like 10-19; use ids, "
                             "ranges, 'all', 'cifar10', 'cifar100' or @file")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise FeddfError(f"--classes: range {tok!r} in {where} is empty; write it low-high")
        if b >= num_classes:
            raise FeddfError(f"--classes: class id {b} in {where} is out of range; ids are 0..{num_classes - 1}")
        ids += range(a, b + 1)
    if not ids:
        raise FeddfError(f"--classes: {where} lists no class ids")
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise FeddfError(f"--classes: class id {dup[0]} is listed twice in {where}; list each class once")
    return ids


def parse_classes(spec: str | None, num_classes: int = NUM_IMAGENET) -> ClassPlan:
    """Resolve a --classes spec for a generator with `num_classes` conditioning classes."""
    spec = "all" if spec is None else str(spec).strip()
    if spec == "all":
        return ClassPlan(spec, tuple(range(num_classes)))
    maps = class_maps()["maps"]
    if spec in maps:
        if num_classes != NUM_IMAGENET:
            raise FeddfError(f"--classes {spec} maps ImageNet classes; this generator has {num_classes} classes")
        m = maps[spec]
        members = tuple(tuple(m["members"][t]) for t in m["targets"])
        ids = tuple(i for mem in members for i in mem)
        return ClassPlan(spec, ids, tuple(m["targets"]), members)
    path = Path(spec[1:] if spec.startswith("@") else spec)
    if spec.startswith("@") or (path.suffix and path.is_file()):
        try:
            text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        except OSError as e:
            raise FeddfError(f"--classes: cannot read class file {path} ({e.strerror})") from None
        except UnicodeDecodeError:
            raise FeddfError(f"--classes: class file {path} is not text (binary data); list class ids and ranges "
                             "like 1,5,10-19 in it") from None
        return ClassPlan(spec, tuple(_parse_ids(text, str(path), num_classes)))
    if re.fullmatch(r"[\d,\s-]+", spec):
        return ClassPlan(spec, tuple(_parse_ids(spec, "the list", num_classes)))
    raise FeddfError(f"unknown --classes {spec!r}: use all, ids/ranges like 1,5,10-19, @file, or one of "
                     f"{', '.join(sorted(maps))}")


def _round_perms(seed: int, stream: int, rounds: np.ndarray, k: int, salt: int = 0) -> np.ndarray:
    """(R, k) permutations of range(k), one per round: argsort of counter-based uniforms (ties ~2^-53, stable)."""
    r = np.asarray(rounds, dtype=np.uint64).reshape(-1, 1)
    # counter = (round * 2^20 + salt) * k + j: unique per (round, salt < 2^20, j < k) up to ~2^60
    counters = (r * np.uint64(1 << 20) + np.uint64(salt)) * np.uint64(k) + np.arange(k, dtype=np.uint64)
    return np.argsort(counter_uniform(stream_key(seed, stream), counters), axis=1, kind="stable")


def _deal(indices: np.ndarray, k: int, seed: int, stream: int, salt: int = 0) -> np.ndarray:
    """Position in 0..k-1 for each index: balanced rounds of k, each round's order shuffled by (seed, stream, salt)."""
    rounds, pos = indices // k, indices % k
    uniq, inv = np.unique(rounds, return_inverse=True)
    return _round_perms(seed, stream, uniq, k, salt)[inv, pos]


def assign(plan: ClassPlan, indices, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels (B,) int64 conditioning ids, targets (B,) int64 or None) for image indices."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if not plan.target_names:
        ids = np.asarray(plan.ids, dtype=np.int64)
        return ids[_deal(idx, len(ids), seed, 1)], None
    mapped = np.asarray([t for t, m in enumerate(plan.members) if m], dtype=np.int64)
    targets = mapped[_deal(idx, len(mapped), seed, 2)]
    # the image is the r-th of its target (one per round): deal r over that target's ImageNet classes
    r = idx // len(mapped)
    labels = np.empty_like(idx)
    for t in np.unique(targets):
        sel = targets == t
        mem = np.asarray(plan.members[t], dtype=np.int64)
        labels[sel] = mem[_deal(r[sel], len(mem), seed, 3, salt=int(t))]
    return labels, targets
