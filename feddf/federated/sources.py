"""Distillation sources: where FedDF's unlabelled batches come from. Every source yields uint8 (B, C, R, R) batches
at the task's channels and resolution; the distiller neither knows nor cares where they come from.

    python -c "from feddf.federated.sources import NoiseSource; print(next(NoiseSource(1, 28).batches(4, 0))[1].shape)"

`--distill-source` (`resolve_source`):
  noise          Gaussian noise min-max scaled per batch into [0, 255] (the paper code's `_create_data_randomly`),
                 generated on the fly from the round's seed.
  gan            the cache given by --cache, else the newest *generated* cache in --cache-dir (written by feddf gen).
  PATH.h5        any feddf cache (generated or imported).
  cifar100 | stl10 | imagenet32 | fashion-mnist
                 a real transfer set (REAL_SOURCES gives the split: cifar100 train as in the paper, stl10 unlabeled,
                 imagenet32 train, and fashion-mnist test[:5000] - the public split a DCGAN is trained on, disjoint
                 from the evaluation split test[5000:]); imported once into --cache-dir with the cache importer, then
                 read like any other cache.
A cache whose channels or resolution differ from the task is refused with one line unless `resize=True`
(--source-resize): then grey<->RGB and a bilinear antialiased resize convert it (feddf.cache.augment).

Caches are read through `feddf.cache.stream.CacheStream`. A cache that fits in `memory_bytes` is read once, in order,
into memory; its batches then carry sample ids (seeded permutation epochs), which lets the distiller compute each
sample's ensemble target once per round. Larger caches are streamed in the stream's chunk-aware shuffled order.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import torch

from feddf.errors import FeddfError

# name -> dataset spec imported as the transfer set
REAL_SOURCES = {"cifar100": "cifar100:train", "stl10": "stl10:unlabeled", "imagenet32": "imagenet32:train",
                "fashion-mnist": "fashion-mnist:test[:5000]"}
SOURCES = ("gan", "noise", *REAL_SOURCES, "PATH.h5")
DEFAULT_MEMORY = 1 << 30  # caches up to 1 GiB of images are held in memory (ids -> cached teacher targets)


class NoiseSource:
    """Per batch: z ~ N(0, 1) of shape (B, C, R, R), then (z - min) / (max - min) over the batch, as uint8."""

    kind = "noise"
    n = None

    def __init__(self, channels: int, resolution: int):
        self.channels, self.resolution = channels, resolution

    def batches(self, batch_size: int, seed: int) -> Iterator[tuple[None, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        while True:
            z = torch.randn(batch_size, self.channels, self.resolution, self.resolution, generator=g)
            z = (z - z.min()) / (z.max() - z.min())
            yield None, (z * 255).round().to(torch.uint8)

    def describe(self) -> dict:
        return {"kind": "noise", "channels": self.channels, "resolution": self.resolution}


class CacheSource:
    """A feddf cache at the task's (channels, resolution); in memory when it fits, otherwise streamed."""

    kind = "cache"

    def __init__(self, path: str | Path, channels: int, resolution: int, resize: bool = False,
                 memory_bytes: int = DEFAULT_MEMORY, name: str | None = None):
        from feddf.cache.reader import check_compatible, open_cache

        self.path = Path(path)
        if not self.path.exists():
            raise FeddfError(f"distillation cache {self.path} does not exist: run `feddf gen` or pass an existing "
                             f"--cache")
        self.info = open_cache(self.path)
        if self.info.n == 0:
            raise FeddfError(f"{self.path} has no committed images yet: wait for `feddf gen` to write some")
        self.name = name or str(self.path)
        self.channels, self.resolution, self.resize = channels, resolution, resize
        self.converted = (self.info.channels, self.info.resolution) != (channels, resolution)
        if self.converted and not resize:
            try:
                check_compatible(self.info, channels, resolution, consumer="the task")
            except FeddfError as e:
                raise FeddfError(f"{e}; or pass --source-resize to convert it on the fly") from None
        self.n = self.info.n
        self.pool: torch.Tensor | None = None
        if self.n * channels * resolution * resolution <= memory_bytes:
            self.pool = self._read_all()

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        from feddf.cache.augment import convert_channels, resize

        if not self.converted:
            return x
        return resize(convert_channels(x, self.channels), self.resolution)

    def _read_all(self) -> torch.Tensor:
        from feddf.cache.stream import CacheStream

        stream = CacheStream(self.path, batch_size=4096, shuffle=False, infinite=False)
        try:
            parts = [self._convert(x) for x, _ in stream]
        finally:
            stream.close()
        pool = torch.cat(parts)[: self.n]
        return pool

    def batches(self, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor | None, torch.Tensor]]:
        if self.pool is not None:
            yield from _pool_batches(self.pool, batch_size, seed)
            return
        from feddf.cache.stream import CacheStream

        stream = CacheStream(self.path, batch_size=batch_size, seed=seed, shuffle=True, infinite=True)
        try:
            for x, _ in stream:
                yield None, self._convert(x)
        finally:
            stream.close()

    def describe(self) -> dict:
        from feddf.utils import sha256_file

        size = self.path.stat().st_size
        return {"kind": "cache", "name": self.name, "path": str(self.path.resolve()), "n": self.n,
                "cache_kind": self.info.kind, "cache_source": self.info.source,
                "channels": self.info.channels, "resolution": self.info.resolution, "converted": self.converted,
                "in_memory": self.pool is not None, "size_bytes": size,
                # big caches: a prefix hash + the size identify the file without reading gigabytes
                "sha256_first_64MiB" if size > (64 << 20) else "sha256": sha256_file(self.path, limit=64 << 20)}


def _pool_batches(pool: torch.Tensor, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches from seeded permutation epochs; ids let the distiller reuse a sample's target."""
    for ids in id_batches(torch.arange(len(pool)), batch_size, seed):
        yield ids, pool[ids]


def id_batches(ids: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless batches of `ids` (LongTensor (n,)) in seeded permutation epochs; a batch may span two epochs."""
    g = torch.Generator().manual_seed(seed)
    buf = torch.zeros(0, dtype=torch.long)
    while True:
        while len(buf) < batch_size:
            buf = torch.cat([buf, ids[torch.randperm(len(ids), generator=g)]])
        out, buf = buf[:batch_size], buf[batch_size:]
        yield out


def _import_name(spec: str) -> str:
    """'fashion-mnist:test[:5000]' -> 'fashion-mnist-test-to5000' (the two slices of a split never collide)."""
    s = re.sub(r"\[(-?\d*):(-?\d*)\]", lambda m: f"-{m.group(1) or ''}to{m.group(2) or ''}", spec)
    return re.sub(r"[^A-Za-z0-9_\-]+", "-", s).strip("-")


def _complete(path: Path) -> bool:
    from feddf.cache.reader import open_cache

    try:
        return bool(open_cache(path).complete)
    except FeddfError:
        return False


def newest_generated_cache(cache_dir: str | Path) -> Path:
    from feddf.cache.reader import open_cache

    found = []
    for p in Path(cache_dir).glob("*.h5") if Path(cache_dir).is_dir() else []:
        try:
            if open_cache(p).kind == "generated":
                found.append(p)
        except FeddfError:
            continue  # a half-written or foreign file is not a candidate
    if not found:
        raise FeddfError(f"--distill-source gan: no generated cache in {cache_dir}/: run `feddf gen` first, or pass "
                         f"--cache PATH.h5")
    return max(found, key=lambda p: p.stat().st_mtime)


def _same_spec(a: str, b: str) -> bool:
    from feddf.data.spec import parse_spec

    try:
        pa, pb = parse_spec(a), parse_spec(b)
    except FeddfError:
        return False
    return (pa.name, pa.split or "train", pa.start, pa.stop) == (pb.name, pb.split or "train", pb.start, pb.stop)


def check_holds(path: Path, name: str, spec: str) -> None:
    """--distill-source NAME with a cache at `path`: refuse unless it is an import of exactly NAME's split (the run
    records the source by name, so a GAN cache or another split there would be reported as NAME)."""
    from feddf.cache.writer import probe_cache

    attrs = probe_cache(path) if path.is_file() else None
    if attrs is None:
        raise FeddfError(f"--distill-source {name}: {path} is not a feddf cache; pass --cache with an import of {spec} "
                         "(feddf cache import) or leave --cache out")
    kind, src, limit = attrs.get("kind"), attrs.get("source"), attrs.get("limit")
    if kind != "imported" or not isinstance(src, str) or not _same_spec(src, spec):
        what = f"{'an' if str(kind)[:1] in 'aeiou' else 'a'} {kind} cache" + (f" of {src}" if src else "") + (f" ({attrs.get('generator')})"
                                                                      if attrs.get("generator") else "")
        raise FeddfError(f"--distill-source {name} needs an import of {spec}, but {path} is {what}: use "
                         f"--distill-source {path} to distil from that cache, or another --cache")
    if limit is not None:  # the writer stores no attribute for None
        raise FeddfError(f"--distill-source {name}: {path} holds only the first {limit} images of {spec} (imported "
                         "with --limit): re-import it without --limit or pass it as --distill-source PATH.h5")


def resolve_source(name: str, channels: int, resolution: int, *, cache: str | None = None,
                   cache_dir: str | Path = "cache", resize: bool = False, memory_bytes: int = DEFAULT_MEMORY,
                   progress: bool = True):
    """The source named by --distill-source (see the module docstring)."""
    if name == "noise":
        return NoiseSource(channels, resolution)
    if name == "gan":
        path = Path(cache) if cache else newest_generated_cache(cache_dir)
        return CacheSource(path, channels, resolution, resize, memory_bytes, name="gan")
    if name in REAL_SOURCES:
        from feddf.data.importers import import_source

        spec = REAL_SOURCES[name]
        out = Path(cache) if cache else Path(cache_dir) / f"{_import_name(spec)}.h5"
        if out.exists():
            check_holds(out, name, spec)
        if not out.exists() or not _complete(out):  # first use, or an interrupted import (which resumes)
            import_source(spec, out, progress=progress)
        return CacheSource(out, channels, resolution, resize, memory_bytes, name=name)
    if name.startswith("hf:"):  # a Hugging Face dataset: imported once into a cache, like the named real sets
        from feddf.data.importers import import_source

        out = Path(cache) if cache else Path(cache_dir) / f"{_import_name(name)[-80:].strip('-')}.h5"
        if not out.exists() or not _complete(out):
            import_source(name, out, progress=progress)
        return CacheSource(out, channels, resolution, resize, memory_bytes, name=name)
    if name.endswith(".h5") or Path(name).exists():
        return CacheSource(name, channels, resolution, resize, memory_bytes)
    raise FeddfError(f"unknown --distill-source {name!r}: choose gan, noise, {', '.join(REAL_SOURCES)} or a PATH.h5 "
                     f"cache")
