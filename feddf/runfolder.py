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

Output folders (`feddf compare --out`, `feddf audit --out`, `feddf flower certs --out`: `claim_output`) follow the
same owner rule without settings: a new or empty folder is claimed, a non-empty folder without a marker of that kind is
refused untouched, and the command's own earlier outputs are replaced only with `--force`. The new outputs are written
into a hidden staging folder inside it and moved in once complete (`OutputFolder.publish`), so a failure leaves the
old outputs as they were and nothing of the new ones; the marker lists the outputs, and a replacement removes only
the earlier outputs it does not rewrite (a user's own files in the folder stay). A folder the claim creates gets
`mode`; an existing folder's mode is never changed.
- `check_folder` makes the same refusals read-only: commands call it before loading their data and `claim` only
  after, so a load that is refused or killed never leaves a folder holding just a lock file.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from feddf.errors import FeddfError

MARKER = ".feddf-run"
LOCK = ".feddf-run.lock"
STAGING = ".feddf-staging-"  # prefix of OutputFolder.publish's staging folders


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


class _Claimed:
    """A locked folder (`path`, `lock`, `created`, `marker`): `release()` (or `with`) drops the lock and removes a
    folder the claim created and never marked (only when empty: nothing of a run is ever deleted)."""

    path: Path
    lock: FolderLock
    created: bool
    marker: dict | None

    def release(self) -> None:
        self.lock.release()
        if self.created and self.marker is None:
            _remove_if_empty(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class RunFolder(_Claimed):
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


class OutputFolder(_Claimed):
    """A claimed output folder (`claim_output`): `publish(write)` writes the outputs, `release()` (or `with`)."""

    def __init__(self, path: Path, kind: str, lock: FolderLock, created: bool, marker: dict | None):
        self.path, self.kind, self.lock, self.created, self.marker = path, kind, lock, created, marker

    def publish(self, write: Callable[[Path], None]) -> list[str]:
        """`write(stage)` puts the new outputs into a fresh staging folder inside this one; once it returns they are
        moved in (marker first), replacing this command's earlier outputs, and the earlier outputs that were not
        rewritten are removed. An exception in `write` leaves the folder as it was. Returns the outputs written."""
        from feddf import __version__
        from feddf.utils import atomic_write_json

        stage = Path(tempfile.mkdtemp(prefix=STAGING, dir=self.path))
        try:
            write(stage)
            names = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
            now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            old = [n for n in (self.marker or {}).get("outputs", []) if isinstance(n, str)]
            self.marker = {"kind": self.kind, "run_id": (self.marker or {}).get("run_id") or uuid.uuid4().hex,
                           "feddf": __version__, "created": (self.marker or {}).get("created") or now,
                           "updated": now, "outputs": names}
            atomic_write_json(self.path / MARKER, self.marker)
            for name in names:
                (self.path / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(stage / name, self.path / name)
            for name in set(old) - set(names):
                p = self.path / name
                if ".." not in Path(name).parts and not Path(name).is_absolute() and p.is_file():
                    p.unlink()
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return names


def claim_output(out: str | os.PathLike, *, kind: str, force: bool = False, flag: str = "--out",
                 legacy: Callable[[Path], bool] | None = None, mode: int | None = None) -> OutputFolder:
    """Lock the output folder `out` of `feddf <kind>` (module docstring); FeddfError, nothing touched, when refused.
    legacy(path): recognises this command's outputs from before markers (replaced with force, like marked ones)."""
    from feddf.utils import check_can_create

    path = Path(out)
    check_can_create(path, flag)
    created = not path.exists()
    marker = None
    if not created:
        try:
            entries = set(os.listdir(path)) - {LOCK}
        except OSError as e:
            raise FeddfError(f"cannot read {flag} {path}: {e.strerror}") from None
        ours = MARKER in entries and (path / MARKER).is_file() and not (path / MARKER).is_symlink()
        marker = read_marker(path) if ours else None
        leftovers = {e for e in entries if e.startswith(STAGING)}  # a killed publish's; ours only in our folder
        if entries - leftovers and marker is None and not (legacy and legacy(path)):
            raise FeddfError(f"{flag} {path} is not empty and is not a feddf {kind} folder (no {MARKER}): refusing "
                             f"to touch it; choose another {flag} (an empty or new folder)")
        if marker is not None and marker.get("kind") != kind:
            raise FeddfError(f"{flag} {path} holds a feddf {marker.get('kind')} folder, not {kind} output: choose "
                             f"another {flag}")
        if entries - leftovers and not force:
            raise FeddfError(f"{flag} {path} holds earlier feddf {kind} output: pass --force to replace it, or "
                             f"choose another {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if created and mode is not None:
            os.chmod(path, mode)  # only a folder made here: an existing folder keeps its mode
    except OSError as e:
        raise FeddfError(f"cannot create {flag} {path}: {e.strerror}; choose a writable folder") from None
    lock = FolderLock(path / LOCK, lambda pid: f"{flag} {path} is in use by another feddf process (pid {pid}): "
                                               f"wait for it to finish or choose another {flag}")
    for e in os.listdir(path):
        if e.startswith(STAGING):
            shutil.rmtree(path / e, ignore_errors=True)
    return OutputFolder(path, kind, lock, created, marker)


def legacy_report(path: Path) -> bool:
    """A `feddf compare` / `feddf audit` report folder from before markers: a report.json that feddf wrote (its
    `versions` name feddf) next to report.md and report.html."""
    try:
        saved = json.loads((path / "report.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return (isinstance(saved, dict) and isinstance(saved.get("versions"), dict) and "feddf" in saved["versions"]
            and (path / "report.md").is_file() and (path / "report.html").is_file())


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()  # only succeeds when empty: nothing of a run is ever deleted
    except OSError:
        pass
