"""`flower-supernode` with shorter waits: the same Flower 1.42 SuperNode (every flag as `flower-supernode --help`
lists them), except that while it has no message it asks the SuperLink for one every `--idle-poll` seconds instead
of every 3 s, and that it looks for its ClientApp's reply, and retries a model object that is not on the SuperLink
yet, within 0.05-0.5 s instead of 0.5 s and 1, 2, 4 .. 10 s.

    python -m feddf.flower.supernode --idle-poll 0.5 --insecure --superlink 127.0.0.1:9092 --isolation process \
        --port 9094 --node-config 'partition-id=0 num-partitions=3'

Why: Flower's SuperNode loop (flwr/supernode/start_client_internal.py) sleeps a hard-coded 3 s whenever a pull
finds no message. A node is idle while the server fuses, so each round's message waited 0-3 s on every node and the
round for the slowest of them: 2.25 s on average with 3 nodes, the largest overhead left in a loopback round once
the ClientApp process is kept (docs/benchmarks.md, "FedDF on Flower"). A node that pulls the message while the
ServerApp is still uploading its objects waited 1 s for them (Flower's first pull backoff), and the reply was
looked for every 0.5 s. The ServerApp side has the same 3 s (Flower's Grid), which server_app.PollingGrid replaces
with an option; the SuperNode offers none, so this wrapper changes two names of that one module: its `time` (a copy
of the time module whose sleep is capped) and its `pull_objects` (Flower's, with a shorter backoff). The wire
protocol, the other Flower modules and what the node does are unchanged. `--idle-poll 3` keeps Flower's idle wait.
"""
from __future__ import annotations

import sys
import time
import types

DEFAULT_IDLE_POLL = 0.5   # s; 3 idle nodes then cost the SuperLink ~6 pulls/s (0.2 s: 15/s, no faster rounds)
LOCAL_WAIT = 0.05         # s; the loop's short sleeps look at the node's own in-memory state: cheap to do often


def patch_loop(idle_poll: float) -> bool:
    """Shorten the waits of Flower's SuperNode loop (module docstring); False, with one warning and Flower's own
    waits (slower rounds, never a different result), when this Flower's loop does not have those names."""
    import functools

    from flwr.supernode import start_client_internal as loop

    if getattr(loop, "time", None) is not time or not callable(getattr(loop, "pull_objects", None)):
        print("feddf.flower.supernode: this Flower's SuperNode loop has no module-level `time` / `pull_objects`; "
              "keeping its own waits", file=sys.stderr, flush=True)
        return False
    view = types.ModuleType("time")
    view.__dict__.update(time.__dict__)
    view.sleep = lambda s: time.sleep(min(float(s), idle_poll if s >= 1 else LOCAL_WAIT))
    loop.time = view
    loop.pull_objects = functools.partial(loop.pull_objects, initial_backoff=LOCAL_WAIT, backoff_cap=0.5,
                                          max_tries_per_object=None)  # bounded by Flower's max_time (2 h)
    return True


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
    patch_loop(poll)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *args]  # Flower's argparse and its telemetry read argv[0]
    flower_supernode()


if __name__ == "__main__":
    main()
