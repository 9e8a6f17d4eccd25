"""`flower-supernode` with a shorter idle poll: the same Flower 1.42 SuperNode (every flag as `flower-supernode
--help` lists them), except that while it has no message it asks the SuperLink for one every `--idle-poll` seconds
instead of every 3 s.

    python -m feddf.flower.supernode --idle-poll 0.5 --insecure --superlink 127.0.0.1:9092 --isolation process \
        --port 9094 --node-config 'partition-id=0 num-partitions=3'

Why: Flower's SuperNode loop (flwr/supernode/start_client_internal.py) sleeps a hard-coded 3 s whenever a pull
finds no message, and 0.5 s between looks for the ClientApp's reply. A node is idle while the server fuses, so each
round's message waits 0-3 s on every node, and the round for the slowest of them: 2.25 s on average with 3 nodes,
the largest overhead left in a loopback round once the ClientApp process is kept (docs/benchmarks.md, "FedDF on
Flower"). The ServerApp side has the same 3 s (Flower's Grid), which server_app.PollingGrid replaces with an
option; the SuperNode offers none, so this wrapper caps the sleeps of that one module (its module-level `time`).
The other Flower modules, the wire protocol and what the node does are unchanged. `--idle-poll 3` is Flower's.
"""
from __future__ import annotations

import sys
import time
import types

DEFAULT_IDLE_POLL = 0.5   # s; 3 idle nodes then cost the SuperLink ~6 pulls/s (0.2 s: 15/s, no faster rounds)


def shorten_idle_poll(seconds: float) -> None:
    """Cap every time.sleep of Flower's SuperNode loop at `seconds` (that module only: its `time` is replaced by a
    copy of the time module whose sleep is capped). A Flower whose loop has no module-level `time` keeps its own
    polling, with one warning: slower rounds, never a different result."""
    from flwr.supernode import start_client_internal as loop

    if getattr(loop, "time", None) is not time:
        print("feddf.flower.supernode: this Flower's SuperNode loop has no module-level `time`; keeping its own "
              "idle poll", file=sys.stderr, flush=True)
        return
    view = types.ModuleType("time")
    view.__dict__.update(time.__dict__)
    view.sleep = lambda s: time.sleep(min(float(s), seconds))
    loop.time = view


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    poll = DEFAULT_IDLE_POLL
    if "--idle-poll" in args:
        i = args.index("--idle-poll")
        try:
            poll = float(args[i + 1])
        except (IndexError, ValueError):
            raise SystemExit(f"--idle-poll {' '.join(args[i + 1:i + 2])!r}: give seconds, e.g. --idle-poll 0.5") \
                from None
        if not 0 < poll <= 3:
            raise SystemExit(f"--idle-poll {poll:g}: give seconds in (0, 3] (3 = Flower's own)")
        del args[i:i + 2]
    shorten_idle_poll(poll)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *args]  # Flower's argparse and its telemetry read argv[0]
    flower_supernode()


if __name__ == "__main__":
    main()
