"""This process's place in a torchrun `feddf gen` job: WORLD_SIZE/RANK/LOCAL_RANK read and checked, the gloo group
with a bounded rendezvous, the barriers between shard phases, and the shard file names.

    python -c "from feddf.generators.ranks import Rank, shard_path; r = Rank(); print(r.rank, r.world); \
print(shard_path(__import__('pathlib').Path('cache/x.h5'), 1, 4))"

Without torchrun (no WORLD_SIZE) it is rank 0 of 1 and creates no process group.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from feddf.errors import FeddfError

RENDEZVOUS_TIMEOUT_S = 600.0   # how long rank 0 waits for its peers to show up (FEDDF_RENDEZVOUS_TIMEOUT overrides)
BARRIER_TIMEOUT = 2 * 86400.0   # ranks may finish their shards hours apart; a dead peer still ends the wait


def env_int(name: str, default: str | None = None) -> int:
    raw = os.environ.get(name, default)
    if raw is None:
        raise FeddfError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} is set but {name} is not: launch with "
                         "`torchrun --nproc-per-node K -m feddf gen ...`, or unset WORLD_SIZE for one process")
    try:
        return int(raw)
    except ValueError:
        raise FeddfError(f"{name}={raw!r} is not an integer: launch with torchrun or unset it") from None


class Rank:
    """This process's place in a torchrun job (WORLD_SIZE/RANK/LOCAL_RANK); world 1 without torchrun.

    The gloo group is created with a bounded rendezvous (a peer that never comes ends the job with one line instead
    of a silent hang); the barriers between shard phases use their own, long timeout."""

    def __init__(self):
        self.world = env_int("WORLD_SIZE", "1")
        if self.world < 1:
            raise FeddfError(f"WORLD_SIZE={self.world} must be >= 1: launch with torchrun or unset it")
        self.rank = env_int("RANK") if self.world > 1 else env_int("RANK", "0")
        self.local = env_int("LOCAL_RANK", "0")
        if not 0 <= self.rank < self.world:
            raise FeddfError(f"RANK={self.rank} is outside [0, WORLD_SIZE={self.world}): launch with torchrun")
        self.dist = None
        self.owned = False  # True when this object created the process group (and so tears it down)
        if self.world > 1:
            import datetime

            import torch.distributed as dist

            for name in ("MASTER_ADDR", "MASTER_PORT"):
                if name not in os.environ:
                    raise FeddfError(f"WORLD_SIZE={self.world} is set but {name} is not: launch with torchrun")
            wait = float(os.environ.get("FEDDF_RENDEZVOUS_TIMEOUT", RENDEZVOUS_TIMEOUT_S))
            if not dist.is_initialized() and (self.rank or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"):
                self._wait_for_store(wait)  # a client of the rendezvous store: it must be up (no C++ retry spam)
            if not dist.is_initialized():  # gloo: only barriers + two tiny CPU all-reduces cross ranks (CPU or GPU runs)
                try:
                    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=wait))
                except Exception as e:  # noqa: BLE001 - a rendezvous failure is the launch's problem, not a bug
                    first = " ".join(str(e).split())[:200]
                    raise FeddfError(f"rank {self.rank}/{self.world}: the other torchrun processes did not join "
                                     f"within {wait:g} s at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
                                     f"({type(e).__name__}: {first}); check the launch or unset WORLD_SIZE") from None
                self.owned = True
            self.dist = dist

    def _wait_for_store(self, wait: float) -> None:
        """Until `wait` seconds pass: a plain TCP connect to MASTER_ADDR:MASTER_PORT (torchrun's store or rank 0's)."""
        import socket

        addr, port = os.environ["MASTER_ADDR"], env_int("MASTER_PORT")
        deadline = time.monotonic() + wait
        while True:
            try:
                socket.create_connection((addr, port), timeout=max(0.1, min(1.0, deadline - time.monotonic()))).close()
                return
            except OSError:
                if time.monotonic() >= deadline:
                    raise FeddfError(f"rank {self.rank}/{self.world}: nothing listens at {addr}:{port} after {wait:g} s "
                                     "(rank 0 / the torchrun agent never came): check the launch or unset "
                                     "WORLD_SIZE") from None
                time.sleep(0.2)

    def barrier(self):
        if self.dist is None:
            return
        import datetime

        try:  # gloo's monitored barrier takes its own timeout (our group's is the short rendezvous one)
            if self.owned:
                self.dist.monitored_barrier(timeout=datetime.timedelta(seconds=BARRIER_TIMEOUT))
            else:  # a caller's group (any backend) keeps its own timeout
                self.dist.barrier()
        except RuntimeError as e:
            raise FeddfError(f"rank {self.rank}/{self.world}: a peer process failed or vanished "
                             f"({' '.join(str(e).split())[:200]})") from None

    def close(self, ok: bool = True):
        # A final barrier, then destroy the group we created while the interpreter is fully alive. Left to interpreter
        # exit, a gloo worker thread can still hold the last all-reduce's work (tensors with Python references);
        # freeing it during finalisation aborts the process ("terminate called without an active exception", exit
        # -6) after all the data was written. A caller's own process group is left alone.
        if self.dist is None or not self.dist.is_initialized():
            return
        if ok:
            self.dist.barrier()
        if self.owned:  # local for gloo (not collective), so a failing rank can tear down too
            self.dist.destroy_process_group()


def shard_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.stem}.shard-{rank}-of-{world}{out.suffix}")
