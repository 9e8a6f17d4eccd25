"""The Flower options of `feddf flower simulate|local|server` (--min-replies, --node-timeout, --round-timeout,
--poll-interval, local's SuperNode count), checked in one place: by the CLI before anything starts, by
`LocalFlower.run` and by the ServerApp.

    python -c "from feddf.flower.options import check_flower_options; check_flower_options(1, 120, 3600, 0.2); print('ok')"
"""
from __future__ import annotations

from feddf.errors import FeddfError

MAX_WAIT = 7 * 24 * 3600   # seconds: --node-timeout / --round-timeout beyond a week are typos
MAX_POLL = 60              # seconds between the ServerApp's pulls (Flower's own Grid: 3)
MAX_LOCAL_NODES = 1000     # SuperNode processes `flower local` starts on this machine


def check_flower_options(min_replies, node_timeout, round_timeout, poll_interval, cfg=None,
                         local: bool = False) -> None:
    """The Flower options of `flower simulate|local|server` (and the ServerApp's run config): one line naming the
    bad value before any process starts. cfg: the run's TrainConfig, whose rounds sample `participants(cfg)`
    clients (a larger --min-replies could never be met); local: its clients are SuperNode processes started here."""
    from feddf.checks import check_range

    if local and cfg is not None:
        check_range("--nodes", cfg.clients, lo=1, hi=MAX_LOCAL_NODES,
                    fix="one SuperNode process per client on this machine")
    most = None
    if cfg is not None:
        from feddf.federated.fusion import participants

        most = participants(cfg)
    if isinstance(min_replies, bool) or not isinstance(min_replies, int):
        raise FeddfError(f"--min-replies {min_replies!r}: must be a whole number of replies")
    check_range("--min-replies", min_replies, lo=1, hi=most,
                fix="a round needs a reply" if most is None else f"a round samples {most} clients: --clients x "
                                                                 "--fraction")
    for flag, value in (("--node-timeout", node_timeout), ("--round-timeout", round_timeout)):
        check_range(flag, value, lo=0, hi=MAX_WAIT, lo_open=True, fix="seconds, at most 7 days")
    check_range("--poll-interval", poll_interval, lo=0, hi=MAX_POLL, lo_open=True,
                fix=f"seconds between pulls for replies, at most {MAX_POLL}")
