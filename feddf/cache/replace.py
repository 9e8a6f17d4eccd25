"""`--force` without losing the old cache: the replacement is built beside it and swapped in only once complete.

    python -c "from feddf.cache.replace import staging_path; print(staging_path('cache/x.h5'))"

`feddf gen --force` / `feddf cache import --force` on an existing cache write the new one to `.<name>.replacing`
next to it (same folder, so the swap is a rename on one filesystem). The old cache stays untouched and readable until
the new one is marked complete; then `swap` fsyncs the new file, renames it over the old name and fsyncs the folder.
A run that fails or is interrupted (an exception, Ctrl-C, SIGTERM, kill -9) leaves the old cache byte-identical and
the staged file behind; the same `--force` command resumes the staged file (same identity) or starts it again.
A cache path that is a symbolic link is never replaced (`refuse_link`): `--force` on a link, or a new cache where a
link points nowhere, is refused with one line naming the link and its target.
Only the holder of the cache's writer lock (`.<name>.lock`, feddf.cache.writer, which calls this module) creates,
resumes or swaps a staged file. Multi-process caches (torchrun) stage every shard and swap shards and the joined cache together at the end
(`swap_all`, called by rank 0 once every shard is complete).
"""
from __future__ import annotations

import os
from pathlib import Path

from feddf.cache.probe import json_attr, probe_cache
from feddf.errors import FeddfError

SUFFIX = ".replacing"  # no .h5 ending: globs for caches (`*.h5`, e.g. the newest generated cache) never see it


def staging_path(path: str | os.PathLike) -> Path:
    """Where the replacement of the cache at `path` is built."""
    p = Path(path)
    return p.with_name(f".{p.name}{SUFFIX}")


def refuse_link(path: str | os.PathLike, force: bool) -> None:
    """FeddfError when writing `path` would rename a file over a symbolic link: `--force` (the swap) or a link whose
    target is missing (a new cache is made beside it and renamed into place). Resuming through a link to a cache of
    the same config writes into its target and is allowed."""
    p = Path(path)
    if not p.is_symlink():
        return
    target = os.readlink(p)
    if force:
        raise FeddfError(f"--out {p} is a symbolic link (to {target}): --force never replaces a link; give the "
                         "target itself as --out, or remove the link")
    if not p.exists():
        raise FeddfError(f"--out {p} is a symbolic link to {target}, which does not exist: a cache is never written "
                         "over a link; give the target itself as --out, or remove the link")


def resumable(staging: Path, identity: dict) -> bool:
    """True when `staging` is a staged cache of exactly this identity (the same --force command, interrupted)."""
    if not staging.is_file():
        return False
    old = probe_cache(staging)
    return old is not None and json_attr(old.get("identity")) == identity


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def swap_all(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each complete staged file over its target, in order, after making every staged file durable (fsync),
    so a power loss after a rename never leaves a target name on unwritten data. All pairs are checked first: a
    missing staged file refuses the whole swap (nothing renamed)."""
    missing = [str(s) for s, _ in pairs if not Path(s).is_file()]
    if missing:
        raise FeddfError(f"the staged replacement {missing[0]} disappeared before it could be swapped in; the old "
                         "cache is untouched: rerun the same --force command")
    for s, _ in pairs:
        fd = os.open(s, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for s, t in pairs:
        os.replace(s, t)
    for folder in {Path(t).parent for _, t in pairs}:
        _fsync_dir(folder)


def swap(staging: Path, target: Path) -> None:
    """One staged cache over its target (see swap_all)."""
    swap_all([(staging, target)])
