"""Start Flower on 127.0.0.1, run the feddf app, read the run's status and stop every process that was started:
`feddf flower simulate` (a SuperLink in simulation mode: Flower's Ray engine plays the clients),
`feddf flower local` (a SuperLink + one SuperNode per partition, a real deployment on loopback; --secure: TLS and
SuperNode authentication, feddf/flower/security.py) and `feddf flower server` (a TLS SuperLink whose SuperNodes run
on other machines).

    python -c "from feddf.flower.launch import LocalFlower; print(LocalFlower.__doc__)"

Every process gets a temporary FLWR_HOME (its config.toml names the SuperLink connection `feddf`), telemetry and
update checks off, its own port and its own process group (stopping a SuperNode also stops the ClientApp processes
it spawned), PYTHONPATH pointing at this feddf, and the SuperLink runs with --disable-runtime-dependency-installation
(the app's dependency, feddf, is already installed). `flwr run --stream` exits 0 even when the ServerApp raised, so
the outcome is read from `flwr ls --run-id ... --format json` and a failed run raises FeddfError with its message.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from feddf.errors import FeddfError
from feddf.flower import security
from feddf.flower.security import Secure

APP_DIR = Path(__file__).resolve().parent / "app"
HOST = "127.0.0.1"
SECRETS = "secrets"   # in the state dir: generated keys (0600, in a 0700 folder), removed when the processes stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    """A Flower console script next to this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FeddfError(f"{name} not found: install Flower with pip install 'feddf[flower]'")
    return found


def node_config(k: int, n: int, arch: str | None, data: str | None = None) -> str:
    """--node-config of partition k: `partition-id=K num-partitions=N arch="A" data="SPEC"` (strings need TOML
    quotes; nodedata.check_specs keeps quotes and backslashes out of a spec)."""
    return (f"partition-id={k} num-partitions={n}" + (f' arch="{arch}"' if arch else "")
            + (f' data="{data}"' if data else ""))


class LocalFlower:
    """A SuperLink (+ SuperNodes) on 127.0.0.1 as a context manager; `run(cfg)` runs the app once on it.

    nodes: one entry per SuperNode, its arch (None = no arch in its node config; the server derives it); empty for
    simulation=True and for SuperNodes that run elsewhere. state_dir keeps FLWR_HOME, every process's log and
    processes.json (name -> pid), and (secure) the generated keys while the processes run and the SuperLink's
    database of registered keys; a temporary folder (removed on success) when None. secure: False (plaintext),
    True (throwaway key material) or a security.Secure (the user's files). host/port: where the SuperLink listens
    (port 0: a free one). isolation: "process" (default) runs each SuperNode with `--isolation process` and one
    long-lived feddf.flower.worker that runs its ClientApp messages; "subprocess" is Flower's default, a fresh
    ClientApp process per message. idle_poll: seconds between an idle SuperNode's pulls (feddf.flower.supernode;
    3 = Flower's own flower-supernode). data: node-local data, SuperNode k's `data=` spec (one per entry of nodes).
    """

    def __init__(self, nodes: list[str | None] | None = None, simulation: bool = False,
                 state_dir: str | Path | None = None, log: Callable[[str], None] = print, stream: bool = True,
                 secure: "bool | Secure" = False, host: str = HOST, port: int = 0,
                 isolation: str = "process", idle_poll: float = 0.5, data: list[str] | None = None):
        self.nodes, self.simulation, self.log, self.stream = list(nodes or []), simulation, log, stream
        self.data = list(data or [None] * len(self.nodes))  # node-local data: SuperNode k's data= spec
        if isolation not in ("process", "subprocess"):
            raise FeddfError(f"isolation={isolation!r}: choose process (a feddf worker per node) or subprocess")
        self.isolation, self.idle_poll = isolation, float(idle_poll)
        self._tmp = state_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="feddf-flower-") if state_dir is None else state_dir).resolve()
        self.procs: dict[str, subprocess.Popen] = {}
        self._groups: set[int] = set()  # process groups seen under ours (close stops them even once orphaned)
        # host: where the SuperLink listens; this machine's own connections (flwr, local SuperNodes, Flower's
        # SuperExec) go to `connect`, which a bind-all address maps to loopback
        self.host, self.port = host, port
        self.connect = HOST if host == "0.0.0.0" else host
        # secure: True = a throwaway CA, certificate and node keys in dir/secrets; a Secure = the user's TLS files
        # (node keys that are missing for the nodes started here are made in dir/secrets)
        self.secure: Secure | None = None
        self._want_secure = secure

    # ---- processes -------------------------------------------------------------------------------------------
    def env(self) -> dict:
        import feddf

        env = dict(os.environ)
        root = str(Path(feddf.__file__).resolve().parent.parent)
        env.update(FLWR_HOME=str(self.dir / "flwr-home"), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                   PYTHONPATH=os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])]),
                   PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
                   RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0", PYTHONUNBUFFERED="1")
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        logf = open(self.dir / f"{name}.log", "wb")
        p = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env(),
                             cwd=self.dir, start_new_session=True)
        logf.close()
        self.procs[name] = p
        (self.dir / "processes.json").write_text(json.dumps({k: v.pid for k, v in self.procs.items()}))
        return p

    def __enter__(self) -> "LocalFlower":
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "flwr-home").mkdir(exist_ok=True)
        self.port = self.port or free_port()
        try:
            if isinstance(self._want_secure, Secure) and any(
                    (self.dir / SECRETS) in p.resolve().parents for p in self._want_secure.files()):
                raise FeddfError(f"keep your TLS files outside {self.dir / SECRETS}: that folder is replaced")
            if self._want_secure:  # keys a killed launcher left behind: never reused
                shutil.rmtree(self.dir / SECRETS, ignore_errors=True)
            self.secure = security.prepare(self._want_secure, self.dir / SECRETS, len(self.nodes))
            self._start_superlink()
            for k, arch in enumerate(self.nodes):
                self.start_supernode(f"supernode-{k}", k, arch, security.supernode_args(self.secure, k),
                                     data=self.data[k])
        except BaseException:
            self.close(keep=True)
            raise
        return self

    def _start_superlink(self) -> None:
        args = [_exe("flower-superlink"), *security.superlink_args(self.secure),
                "--disable-runtime-dependency-installation"] + (["--simulation"] if self.simulation else [])
        keys = self.secure.public_keys if self.secure else ()
        if keys and not self.nodes:
            # Nodes on other machines may connect the moment the SuperLink listens, and one whose key is not yet
            # registered is refused for good: register the keys first, on a private port, into a database the
            # SuperLink then serves. The database also keeps the nodes' identities over a SuperLink restart (a
            # --resume with the same --state-dir): running SuperNodes reconnect by themselves.
            db = self.dir / "superlink.db"
            if not db.exists():
                (self.dir / security.REGISTERED).unlink(missing_ok=True)
            args += ["--database", str(db)]
            setup = free_port()
            self._write_connection(setup)
            self._spawn("superlink-setup", [*args, "--host", self.connect, "--port", str(setup)])
            self._wait_port(setup, "superlink-setup")
            security.sync_keys(self.flwr, keys, self.dir / security.REGISTERED)
            self._stop({"superlink-setup": self.procs.pop("superlink-setup")})
        self._write_connection(self.port)
        self._spawn("superlink", [*args, "--host", self.host, "--port", str(self.port)])
        self._wait_port(self.port, "superlink")
        self._remember()
        if keys and self.nodes:  # the nodes started here start after this
            security.sync_keys(self.flwr, keys, None)

    def _write_connection(self, port: int) -> None:
        """FLWR_HOME/config.toml: the connection `feddf` that every flwr command here uses."""
        (self.dir / "flwr-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "feddf"\n\n[superlink.feddf]\naddress = "{self.connect}:{port}"\n'
            f'{security.connection(self.secure)}\n')

    def start_supernode(self, name: str, k: int, arch: str | None, tls: list[str],
                        extra: tuple[str, ...] = (), data: str | None = None) -> subprocess.Popen:
        """A SuperNode for partition k of len(nodes), with `tls` (security.supernode_args) as its TLS/auth flags
        and (node-local data) its own `data` spec."""
        runtime_port = free_port()
        proc = self._spawn(name, [*self._supernode_exe(), *tls, "--superlink", f"{self.connect}:{self.port}",
                                  "--host", HOST, "--port", str(runtime_port), "--node-config",
                                  node_config(k, len(self.nodes), arch, data), "--isolation", self.isolation, *extra])
        if self.isolation == "process":
            self._spawn_worker(name, runtime_port, proc.pid)
        return proc

    def _supernode_exe(self) -> list[str]:
        """Flower's flower-supernode, or the same SuperNode polling every idle_poll s (feddf.flower.supernode)."""
        if self.idle_poll >= 3:
            return [_exe("flower-supernode")]
        return [sys.executable, "-m", "feddf.flower.supernode", "--idle-poll", f"{self.idle_poll:g}"]

    def _spawn_worker(self, node: str, runtime_port: int, node_pid: int) -> None:
        """A SuperNode's ClientApp process (feddf.flower.worker): it connects once the node's Runtime API listens
        and exits with the node (--parent-pid)."""
        self._spawn(f"clientapp-{node.removeprefix('supernode-')}",
                    [sys.executable, "-m", "feddf.flower.worker", "--runtime-api-address", f"{HOST}:{runtime_port}",
                     "--parent-pid", str(node_pid)])

    def _wait_port(self, port: int, name: str, timeout: float = 60) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.procs[name].poll() is not None:
                raise FeddfError(f"{name} exited ({self.procs[name].returncode}) at start: see {self.dir}/{name}.log")
            with socket.socket() as s:
                if s.connect_ex((self.connect, port)) == 0:
                    return
            time.sleep(0.2)
        raise FeddfError(f"{name} did not listen on {self.connect}:{port} within {timeout:g} s: see "
                         f"{self.dir}/{name}.log")

    def _remember(self) -> None:
        self._groups |= _descendant_groups({p.pid for p in self.procs.values()})

    def __exit__(self, *exc) -> None:
        self.close(keep=exc[0] is not None)

    def close(self, keep: bool = False) -> None:
        """Stop every process started (`_stop`) and the groups seen earlier that still hold a process of this
        FLWR_HOME (a killed SuperLink orphans its SuperExec's ServerApp); remove generated keys and a temporary
        state dir."""
        home = f"FLWR_HOME={self.dir / 'flwr-home'}".encode()
        self._stop(self.procs, {g for g in self._groups if _group_has_env(g, home)})
        self.procs.clear()
        if self._want_secure:  # throwaway keys made here: useless once the processes are gone
            shutil.rmtree(self.dir / SECRETS, ignore_errors=True)
        if self._tmp and not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _stop(procs: dict[str, subprocess.Popen], extra: set[int] = frozenset()) -> None:
        """Stop `procs` with the process groups of their descendants (the SuperLink's SuperExec detaches into a
        group of its own) and the groups `extra`: SIGTERM, then SIGKILL after 10 s."""
        groups = {p.pid for p in procs.values()} | _descendant_groups({p.pid for p in procs.values()}) | set(extra)
        groups.discard(os.getpgrp())
        for g in groups:
            _signal_group(g, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for g in groups:
            _signal_group(g, signal.SIGKILL)  # whatever is left: superexec, client/server apps
        for p in procs.values():
            p.wait()
        for g in groups:  # SIGKILL is asynchronous: return once every member is gone
            while _group_alive(g) and time.monotonic() < deadline + 5:
                time.sleep(0.05)

    # ---- one run of the app ----------------------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float | None = 120) -> subprocess.CompletedProcess:
        return subprocess.run([_exe("flwr"), *args], capture_output=True, text=True, env=self.env(), cwd=self.dir,
                              timeout=timeout)

    def run(self, cfg, engine: str, min_replies: int = 1, node_timeout: float = 120,
            round_timeout: float = 3600, poll_interval: float = 0.2) -> dict:
        """Run the app once with the resolved cfg (cfg.out absolute); FeddfError with the ServerApp's error."""
        from feddf.flower.options import check_flower_options

        check_flower_options(min_replies, node_timeout, round_timeout, poll_interval, cfg)
        n = len(self.nodes) if self.nodes else cfg.clients
        from feddf.flower.wire import config_to_json

        cfg_file = self.dir / f"config-{int(time.time() * 1000)}.json"
        cfg_file.write_text(config_to_json(cfg))
        run_config = (f'config-file="{cfg_file}" engine="{engine}" min-replies={int(min_replies)} '
                      f"node-timeout={float(node_timeout)} round-timeout={float(round_timeout)} "
                      f"poll-interval={float(poll_interval)}")
        args = [_exe("flwr"), "run", str(APP_DIR), "feddf", "--stream", "--run-config", run_config]
        if self.simulation:
            args += ["--federation-config", f"num-supernodes={n} client-resources-num-cpus=1"]
        run_id = None
        with open(self.dir / "run.log", "a") as logf:
            p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env(),
                                 cwd=self.dir, start_new_session=True)
            self.procs[f"flwr-run-{len(self.procs)}"] = p
            for line in p.stdout:
                logf.write(line)
                m = re.search(r"Successfully started run (\d+)", line)
                if m:
                    run_id = m.group(1)
                    self._remember()
                if self.stream:
                    self.log(line.rstrip("\n"))
            p.wait()
        if run_id is None:
            raise FeddfError(f"flwr run did not start a run (exit {p.returncode}): see {self.dir}/run.log")
        link = self.procs.get("superlink")
        if link is not None and link.poll() is not None:
            raise FeddfError(f"the SuperLink exited ({link.returncode}) during Flower run {run_id}: see "
                             f"{self.dir}/superlink.log{_resume_hint(cfg)}")
        status, details = self.status(run_id)
        if status != "finished:completed":
            raise FeddfError(f"the Flower run {run_id} ended {status}: {details}{_resume_hint(cfg)}")
        return {"run_id": run_id, "status": status, "out": cfg.out}

    def status(self, run_id: str) -> tuple[str, str]:
        """(status, status-details) of a run from `flwr ls --format json` (waits while it is not finished)."""
        t0 = time.monotonic()
        while True:
            res = self.flwr("ls", "feddf", "--run-id", str(run_id), "--format", "json")
            try:
                row = json.loads(res.stdout)["runs"][0]
            except (ValueError, KeyError, IndexError):
                raise FeddfError(f"flwr ls could not read run {run_id}: {(res.stdout + res.stderr).strip()[-300:]}") \
                    from None
            if str(row["status"]).startswith("finished") or time.monotonic() - t0 > 60:
                return str(row["status"]), str(row.get("status-details", ""))
            time.sleep(1)


def _resume_hint(cfg) -> str:
    """'; --resume continues after round N' when the run folder holds a checkpoint."""
    import torch

    ckpt = Path(cfg.out) / "checkpoint.pt"
    try:
        r = torch.load(ckpt, map_location="cpu", weights_only=True)["round"] if ckpt.exists() else None
    except Exception:  # noqa: BLE001 - a hint only; --resume itself reports a damaged checkpoint
        return ""
    return f"; --resume continues after round {r}" if r is not None else ""


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)  # start_new_session=True: the group id is the leader's pid
    except (ProcessLookupError, PermissionError):
        pass


def _processes() -> list[tuple[int, int, int, str]]:
    """(pid, ppid, pgid, state) of every process (Linux /proc; elsewhere: none)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            out.append((int(stat.parent.name), int(ppid), int(pgrp), state))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _descendant_groups(roots: set[int]) -> set[int]:
    """Process groups of every live descendant of `roots`."""
    procs = _processes()
    found, frontier = set(), set(roots)
    while frontier:
        children = {pid for pid, ppid, _, _ in procs if ppid in frontier and pid not in found}
        found |= children
        frontier = children
    return {pgid for pid, _, pgid, state in procs if pid in found and state != "Z"}


def _group_has_env(pgid: int, entry: bytes) -> bool:
    """Whether a live process of group pgid has `entry` (b"KEY=value") in its environment: a group id remembered
    earlier is only signalled while it still holds one of our processes (never a stranger that reused the id)."""
    for pid, _, g, state in _processes():
        if g == pgid and state != "Z":
            try:
                if entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    return True
            except OSError:
                continue
    return False


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is still in group pgid."""
    return any(g == pgid and state != "Z" for _, _, g, state in _processes())


def prepare(cfg):
    """The resolved cfg with an absolute `out`, checked like `feddf train` checks it (a --resume against the run's
    checkpoint), before any process starts."""
    import dataclasses

    cfg = cfg.resolved()
    out = Path(cfg.out).resolve()
    cfg = dataclasses.replace(cfg, out=str(out), progress=False,
                              cache=str(Path(cfg.cache).resolve()) if cfg.cache else None,
                              cache_dir=str(Path(cfg.cache_dir).resolve()),
                              data_root=str(Path(cfg.data_root).resolve()) if cfg.data_root else None)
    if cfg.distill_source.endswith(".h5"):
        cfg = dataclasses.replace(cfg, distill_source=str(Path(cfg.distill_source).resolve()))
    from feddf.federated.runner import load_checkpoint
    from feddf.federated.teachers import resolve_precision
    from feddf.utils import resolve_device

    # as the ServerApp resolves it (same machine), so a --resume compares like with like
    cfg = dataclasses.replace(cfg, teacher_precision=resolve_precision(cfg.teacher_precision,
                                                                       resolve_device(cfg.device)))
    if not cfg.resume and ((out / "checkpoint.pt").exists() or (out / "metrics.jsonl").exists()):
        raise FeddfError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if cfg.aggregator == "feddf":  # a missing cache or one that does not fit the task: one line, nothing started
        from feddf.data import dataset_info
        from feddf.federated.setup import task_source

        src = task_source(cfg, dataset_info(cfg.dataset, cfg.columns()), memory_bytes=0, progress=False)
        if cfg.distill_source == "gan" and cfg.cache is None:  # the newest cache now, not when the ServerApp looks
            cfg = dataclasses.replace(cfg, cache=str(Path(src.path).resolve()))
    if cfg.resume and (out / "checkpoint.pt").exists():
        load_checkpoint(out / "checkpoint.pt", cfg)  # other settings or too few --rounds: one line, nothing started
    return cfg


def install_sigterm() -> None:
    """SIGTERM -> KeyboardInterrupt, so `finally` blocks stop the processes we started."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
