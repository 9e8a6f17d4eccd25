"""Run folders (`feddf train --out`, `feddf gan-train --out`): an owner marker and an exclusive lock, so a run never
writes into someone else's folder, into a run made with other settings, or into a folder another process is using.

    python -c "from feddf.runfolder import claim; f = claim('/tmp/r', kind='train', settings={'a': 1}); \
f.mark(); print(open('/tmp/r/.feddf-run').read()); f.release()"

- `.feddf-run` (JSON: kind, run_id, config_hash, settings, created, feddf version) marks the folder as a feddf run of
  `kind`. It is written once, atomically, when the run first writes its outputs (`RunFolder.mark`).
- `.feddf-run.lock` holds an exclusive flock for as long as the run uses the folder; the kernel drops it when the
  holder dies (kill -9), so a crashed run can be resumed at once and a live one is never shared. Like the cache
  writer's lock (feddf/cache/writer.py) the file is unlinked on release, and a claimer that locked a file which was
  unlinked meanwhile retries on the new one.
- A folder that exists, is not empty (our lock file aside) and has no marker is refused before anything is written
  into it, unless the caller recognises it as one of its own runs from before markers existed (`legacy`).
- A marked folder whose config hash differs from this run's is refused (the settings that may change on --resume are
  left out of `settings` by the caller).
- `check_folder` makes the same refusals read-only: commands call it before loading their data and `claim` only
  after, so a load that is refused or killed never leaves a folder holding just a lock file.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Callable

from feddf.errors import FeddfError

MARKER = ".feddf-run"
LOCK = ".feddf-run.lock"


def config_hash(settings: dict) -> str:
    from feddf.utils import to_jsonable

    return hashlib.sha256(json.dumps(to_jsonable(settings), sort_keys=True).encode()).hexdigest()[:16]


def _diff(saved: dict, now: dict) -> str:
    keys = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    return ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys[:3])


class FolderLock:
    """Exclusive, non-blocking flock on `lock_path`; `busy(pid)` builds the refusal when another process holds it."""

    def __init__(self, lock_path: Path, busy: Callable[[str], str]):
        self.lock_path = lock_path
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise FeddfError(f"cannot write {lock_path.parent}: {e.strerror}; choose a writable --out") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise FeddfError(busy(holder)) from None
            try:  # the previous holder may have unlinked the file between our open and flock: retry then
                if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.lock_path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


class RunFolder:
    """A claimed run folder: `mark()` once the run writes its outputs, `release()` (or `with`) when done."""

    def __init__(self, path: Path, kind: str, settings: dict, lock: FolderLock, created: bool):
        self.path, self.kind, self.settings, self.lock, self.created = path, kind, settings, lock, created
        self.marker = read_marker(path)

    def mark(self) -> None:
        """Write the owner marker (once; a marked folder keeps its run id)."""
        if self.marker is not None:
            return
        from feddf import __version__
        from feddf.utils import atomic_write_json

        self.marker = {"kind": self.kind, "run_id": uuid.uuid4().hex, "config_hash": config_hash(self.settings),
                       "settings": self.settings, "feddf": __version__,
                       "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        atomic_write_json(self.path / MARKER, self.marker)

    def release(self) -> None:
        """Drop the lock; a folder this claim created and never wrote into is removed again."""
        self.lock.release()
        if self.created and self.marker is None:
            _remove_if_empty(self.path)

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def legacy_run(key: str) -> Callable[[Path], bool]:
    """A run folder from before .feddf-run markers: a config.json with feddf's versions and `key` (what the command
    records: "aggregator" for train, "generator" for gan-train) next to a checkpoint.pt."""
    def check(path: Path) -> bool:
        try:
            saved = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return False
        return (isinstance(saved, dict) and isinstance(saved.get("versions"), dict) and "feddf" in saved["versions"]
                and key in saved and (path / "checkpoint.pt").is_file())

    return check


def read_marker(path: Path) -> dict | None:
    p = Path(path) / MARKER
    if not p.exists():
        return None
    try:
        marker = json.loads(p.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise FeddfError(f"{p} is damaged ({type(e).__name__}): this folder's owner is unknown; choose another "
                         "--out") from None
    if not isinstance(marker, dict) or not isinstance(marker.get("kind"), str):
        raise FeddfError(f"{p} is not a feddf run marker: choose another --out")
    return marker


def check_folder(out: str | os.PathLike, *, kind: str, settings: dict,
                 legacy: Callable[[Path], bool] | None = None) -> None:
    """The refusals of `claim`, read-only (nothing created or locked): commands run it before loading their data, so
    a foreign or mismatched --out is refused at once and a run killed while loading leaves no folder behind."""
    from feddf.utils import to_jsonable

    path = Path(out)
    settings = to_jsonable(settings)
    if path.exists() and not path.is_dir():
        raise FeddfError(f"--out {path} is a file, not a run folder: choose another --out")
    if not path.exists():
        return
    try:
        entries = set(os.listdir(path)) - {LOCK}
    except OSError as e:
        raise FeddfError(f"cannot read --out {path}: {e.strerror}") from None
    if entries and MARKER not in entries and not (legacy and legacy(path)):
        raise FeddfError(f"--out {path} is not empty and is not a feddf {kind} run (no {MARKER}): refusing to "
                         "touch it; choose another --out")
    m = read_marker(path)
    if m is not None:
        if m.get("kind") != kind:
            raise FeddfError(f"--out {path} holds a feddf {m.get('kind')} run, not a {kind} run: choose another --out")
        if m.get("config_hash") != config_hash(settings):
            saved = m.get("settings") if isinstance(m.get("settings"), dict) else {}
            raise FeddfError(f"--out {path} holds a {kind} run made with other settings ({_diff(saved, settings)}): "
                             "use its settings (--resume continues it) or choose another --out")


def claim(out: str | os.PathLike, *, kind: str, settings: dict,
          legacy: Callable[[Path], bool] | None = None) -> RunFolder:
    """Lock `out` for a `feddf <kind>` run with `settings` (see the module docstring); FeddfError when refused."""
    from feddf.utils import to_jsonable

    path = Path(out)
    settings = to_jsonable(settings)
    check_folder(path, kind=kind, settings=settings, legacy=legacy)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FeddfError(f"cannot create --out {path}: {e.strerror}; choose a writable folder") from None
    lock = FolderLock(path / LOCK, lambda pid: f"--out {path} is in use by another feddf process (pid {pid}): wait "
                                               "for it to finish or choose another --out")
    try:
        check_folder(path, kind=kind, settings=settings, legacy=legacy)  # again, now that we hold the lock
        return RunFolder(path, kind, settings, lock, created)
    except BaseException:
        lock.release()
        if created:
            _remove_if_empty(path)
        raise


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()  # only succeeds when empty: nothing of a run is ever deleted
    except OSError:
        pass
