"""`feddf flower simulate|local|server|certs`: the FedDF rounds of `feddf train` on Flower (pip install
'feddf[flower]').

    feddf flower local --secure --nodes 3 --archs cnn,resnet8 --fraction 1 --rounds 2 --distill-source noise \
        --train-limit 600 --test-limit 500 --local-epochs 1 --distill-steps 20 --eval-every 10 --out runs/flower

simulate, local and server take `feddf train`'s options (same defaults, same run folder, --resume) plus the Flower
ones below; `server` is the SuperLink of a multi-machine deployment, `certs` makes its key material; docs/flower.md.
"""
from __future__ import annotations

import click
import cloup

from feddf.cli.train import _command, group_options

FLOWER_OPTIONS = [
    click.option("--min-replies", type=int, default=1, show_default=True,
                 help="A round needs at least this many client replies (1 to the clients a round samples); fewer "
                      "stops the run."),
    click.option("--node-timeout", type=float, default=120, show_default=True,
                 help="Seconds to wait for every partition's SuperNode to connect (> 0, at most 7 days)."),
    click.option("--round-timeout", type=float, default=3600, show_default=True,
                 help="Seconds a round waits for its replies (> 0, at most 7 days)."),
    click.option("--poll-interval", type=float, default=0.2, show_default=True,
                 help="Seconds between the ServerApp's pulls for replies (> 0, at most 60; Flower's own Grid "
                      "waits 3)."),
    click.option("--state-dir", type=click.Path(file_okay=False), default=None,
                 help="Keep FLWR_HOME, the logs of every process and processes.json here (default: a temporary "
                      "folder, removed after a successful run)."),
    click.option("--json", "as_json", is_flag=True, help="Print the final summary as one JSON line on stdout."),
    click.option("--quiet", "-q", is_flag=True, help="Do not stream Flower's logs."),
]


# the SuperLink's TLS files (Flower's own flag names); `local --secure` makes throwaway ones instead
TLS_OPTIONS = [
    click.option("--ssl-ca-certfile", type=click.Path(dir_okay=False), default=None,
                 help="CA certificate the SuperNodes verify the SuperLink against (PEM)."),
    click.option("--ssl-certfile", type=click.Path(dir_okay=False), default=None,
                 help="SuperLink certificate, issued by that CA, naming 127.0.0.1 and the address nodes use (PEM)."),
    click.option("--ssl-keyfile", type=click.Path(dir_okay=False), default=None,
                 help="SuperLink private key (PEM, unencrypted)."),
]


# node-local data (docs/flower.md): the server's own sets; `local` adds --node-data, one spec per SuperNode
SERVER_DATA_OPTIONS = [
    click.option("--server-data", "server_data", default=None, metavar="SPEC",
                 help="Node-local data: the server's labelled validation set (FedDF validates and early-stops on "
                      "it); the task (channels, resolution, classes) comes from it, so no --dataset. Any dataset "
                      "spec: npz:PATH, folder:PATH, cache:PATH.h5, NAME:SPLIT[a:b]."),
    click.option("--test-data", "test_data", default=None, metavar="SPEC",
                 help="With --server-data: the server's test set (default: accuracies on --server-data)."),
]


# --help: the Flower options in a section of their own, after the train options' sections (cli/train.py GROUPS)
FLOWER_GROUP = {"Flower": ["nodes", "node_arch", "secure", "isolation", "node_poll", "node_data", "server_data",
                           "test_data", "host", "port", "public_keys", "ssl_ca_certfile", "ssl_certfile",
                           "ssl_keyfile", "min_replies", "node_timeout", "round_timeout", "poll_interval",
                           "state_dir"]}


def _grouped(fn):
    return group_options(fn, FLOWER_GROUP)


def _flower_command(fn, extra=()):
    fn = _command(fn)
    for o in reversed([*FLOWER_OPTIONS, *extra]):
        fn = o(fn)
    return fn


def _tls_command(fn):
    return _flower_command(fn, [*SERVER_DATA_OPTIONS, *TLS_OPTIONS])


@click.group("flower")
def command() -> None:
    """Run FedDF (or FedAvg/FedProx/FedAvgM) on Flower: simulation or a SuperLink + SuperNodes deployment.

    \b
    Examples:
      feddf flower simulate --clients 4 --arch cnn --aggregator fedavg --rounds 2 --out runs/flower-sim
      feddf flower local --nodes 3 --archs cnn,resnet8 --distill-source noise --out runs/flower-local
      feddf flower local --secure --nodes 2 --rounds 3 --aggregator fedavg --out runs/flower-tls
      feddf flower local --node-data npz:a.npz,npz:b.npz --server-data npz:val.npz --aggregator fedavg \\
          --arch cnn --out runs/flower-sites
      feddf flower local --secure --nodes 2 --rounds 6 --aggregator fedavg --out runs/flower-tls --resume
      feddf flower certs --out certs --host server.example.org --nodes 3
      feddf flower server --ssl-ca-certfile certs/ca.crt --ssl-certfile certs/superlink.crt \\
          --ssl-keyfile certs/superlink.key --node-public-key certs/node-0.pub ... --host 0.0.0.0 --out runs/x
    """


@command.command("simulate", cls=cloup.Command)
@_grouped
@_flower_command
def simulate(**options) -> None:
    """Flower's simulation engine (Ray): a SuperLink in simulation mode plays one virtual SuperNode per client."""
    _run(options, simulation=True)


@command.command("local", cls=cloup.Command)
@_grouped
@click.option("--nodes", type=int, default=None, help="SuperNodes to start (one per client; default --clients).")
@click.option("--node-arch", "node_arch", multiple=True, metavar="K=ARCH",
              help="Give SuperNode K this arch in its --node-config (default archs[K*A//N]); repeatable.")
@click.option("--secure", is_flag=True,
              help="TLS + SuperNode authentication with a throwaway CA, certificate and one key pair per SuperNode "
                   "(0600, in the state dir, deleted when the processes stop); implied by --ssl-*.")
@click.option("--isolation", type=click.Choice(["process", "subprocess"]), default="process", show_default=True,
              help="process: each SuperNode runs --isolation process with one long-lived feddf ClientApp worker "
                   "(imports and data kept across messages); subprocess: Flower's default, a process per message.")
@click.option("--node-poll", type=click.FloatRange(0, 3, min_open=True), default=0.5, show_default=True,
              help="Seconds between an idle SuperNode's pulls for a message (Flower's flower-supernode: 3, which "
                   "this value selects).")
@click.option("--node-data", default=None, metavar="SPEC,SPEC,...",
              help="Node-local data (with --server-data): one SuperNode per spec, each trains on all of its own "
                   "data= and nothing else; the server never opens them.")
@_tls_command
def local(nodes, node_arch, secure, isolation, node_poll, node_data, ssl_ca_certfile, ssl_certfile, ssl_keyfile,
          **options) -> None:
    """A real deployment on 127.0.0.1: flower-superlink + one flower-supernode per partition (or per --node-data
    spec), then `flwr run`."""
    from feddf.flower.security import from_files

    if ssl_ca_certfile or ssl_certfile or ssl_keyfile:
        secure = from_files(ssl_ca_certfile, ssl_certfile, ssl_keyfile)
    _run(options, simulation=False, nodes=nodes, node_arch=node_arch, secure=secure,
         nodes_opts={"isolation": isolation, "idle_poll": node_poll}, node_data=node_data)


@command.command("server", cls=cloup.Command)
@_grouped
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the SuperLink listens on (0.0.0.0: every interface).")
@click.option("--port", type=int, default=9093, show_default=True, help="The SuperLink's port (Fleet, Control and "
              "Runtime APIs share it).")
@click.option("--node-public-key", "public_keys", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="OpenSSH public key of a SuperNode allowed in (one per node; repeatable).")
@_tls_command
def server(host, port, public_keys, ssl_ca_certfile, ssl_certfile, ssl_keyfile, **options) -> None:
    """The server of a multi-machine deployment: a SuperLink with TLS and node authentication (your certificate and
    the nodes' public keys) that runs the app once; start `flower-supernode` on each client machine (docs/flower.md)."""
    from feddf.flower.security import from_files

    secure = from_files(ssl_ca_certfile, ssl_certfile, ssl_keyfile, public_keys=public_keys,
                        host="127.0.0.1" if host == "0.0.0.0" else host)
    _run(options, simulation=False, remote=True, secure=secure, host=host, port=port)


@command.command("certs")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the files: a new one (made "
              "0700), an empty one (its mode is kept) or an earlier `flower certs` output (with --force).")
@click.option("--host", "hosts", multiple=True, metavar="NAME",
              help="Name or IP address the SuperNodes reach the SuperLink at (repeatable; 127.0.0.1 is always in).")
@click.option("--nodes", type=int, required=True, help="SuperNode key pairs to make (node-0 .. node-N-1; at most "
              "10000).")
@click.option("--days", type=int, default=365, show_default=True, help="Validity of the certificates (1 to 36500).")
@click.option("--force", is_flag=True, help="Replace the files an earlier `feddf flower certs` wrote to --out (a "
              "folder holding anything else is never touched).")
def certs(out, hosts, nodes, days, force) -> None:
    """A CA (ca.crt, ca.key), a SuperLink certificate (superlink.crt, superlink.key) and SuperNode key pairs
    (node-K, node-K.pub) for `feddf flower server` / flower-supernode; private keys 0600, replaced only with
    --force."""
    from feddf.flower.security import check_request, generate
    from feddf.runfolder import claim_output

    check_request(nodes, hosts, days)
    with claim_output(out, kind="flower-certs", force=force, mode=0o700) as folder:
        # the set is made in a staging folder inside --out and moved in whole: a failure leaves nothing of it
        folder.publish(lambda d: generate(d, nodes, list(hosts), days=days, keep_ca=True))
    click.echo(f"wrote {out}: ca.crt, ca.key, superlink.crt, superlink.key, node-0..node-{nodes - 1} (+ .pub); "
               f"the SuperLink keeps superlink.*, node-*.pub; client machine K gets ca.crt and node-K")


def _run(options: dict, simulation: bool, nodes: int | None = None, node_arch: tuple = (), secure=False,
         remote: bool = False, host: str = "127.0.0.1", port: int = 0, nodes_opts: dict | None = None,
         node_data: str | None = None) -> None:
    """remote: start no SuperNodes (they run on other machines and connect to host:port). nodes_opts: LocalFlower's
    isolation / idle_poll for the SuperNodes it starts. node_data: `local --node-data`, one spec per SuperNode."""
    import json
    import sys

    from feddf.errors import FeddfError
    from feddf.federated.config import config_from, load_config_file
    from feddf.flower.options import check_flower_options

    as_json, quiet, config_file = options.pop("as_json"), options.pop("quiet"), options.pop("config_file")
    flower = {k: options.pop(k) for k in ("min_replies", "node_timeout", "round_timeout", "poll_interval",
                                          "state_dir")}
    timing = [flower[k] for k in ("min_replies", "node_timeout", "round_timeout", "poll_interval")]
    check_flower_options(*timing)  # before the config file, the data and Flower itself are looked at
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise FeddfError("Flower is not installed: pip install 'feddf[flower]'") from None
    from feddf.federated.partition import assign_archs
    from feddf.flower.launch import LocalFlower, install_sigterm, prepare

    given = {k: v for k, v in options.items() if v is not None}
    if "archs" in given:
        given["archs"] = [a.strip() for a in given["archs"].split(",") if a.strip()]
    specs = node_data_specs(node_data, nodes, given)
    if nodes is not None:
        if "clients" in given and given["clients"] != nodes:
            raise FeddfError(f"--nodes {nodes} --clients {given['clients']}: one SuperNode per client; "
                             f"give one of them")
        given["clients"] = nodes
    raw = config_from(load_config_file(config_file) if config_file else {}, given)
    if raw.server_data is not None and (simulation or not remote and not specs):
        raise FeddfError(f"--server-data {raw.server_data}: node-local data needs SuperNodes that bring it: "
                         "`feddf flower local --node-data SPEC,SPEC,...` or `feddf flower server`")
    if specs and raw.server_data is None:
        raise FeddfError("--node-data: give the server's own labelled set with --server-data SPEC (the task and "
                         "FedDF's validation come from it)")
    check_flower_options(*timing, raw, local=not (simulation or remote))  # --min-replies vs a round's clients
    cfg = prepare(raw)
    if remote and len(secure.public_keys) < cfg.clients:
        raise FeddfError(f"--clients {cfg.clients} but {len(secure.public_keys)} --node-public-key: give one key "
                         "per SuperNode (partition)")
    archs = [None] * cfg.clients if simulation else assign_archs(cfg.clients, cfg.archs)
    for item in node_arch:
        k, _, arch = item.partition("=")
        if not k.isdigit() or not arch or not 0 <= int(k) < cfg.clients:
            raise FeddfError(f"--node-arch {item!r}: use K=ARCH with K in 0..{cfg.clients - 1}")
        archs[int(k)] = arch
    log = (lambda s: click.echo(s, err=True))
    install_sigterm()
    engine = "flower-simulation" if simulation else "flower-deployment"
    from feddf.federated.runner import run_settings
    from feddf.runfolder import claim

    # the launcher holds the run folder (owner marker + lock, as `feddf train`) while the ServerApp writes into it
    folder = claim(cfg.out, kind="flower", settings=run_settings(cfg))
    try:
        folder.mark()
        with LocalFlower([] if simulation or remote else archs, simulation=simulation, state_dir=flower["state_dir"],
                         log=log, stream=not quiet, secure=secure, host=host, port=port, data=specs or None,
                         **(nodes_opts or {})) as fl:
            if remote:
                log(f"SuperLink on {host}:{fl.port} (TLS, {len(secure.public_keys)} registered SuperNode keys): "
                    f"waiting {flower['node_timeout']:g} s for {cfg.clients} SuperNodes")
            res = fl.run(cfg, engine, min_replies=flower["min_replies"], node_timeout=flower["node_timeout"],
                         round_timeout=flower["round_timeout"], poll_interval=flower["poll_interval"])
    finally:
        folder.release()
    summary = _summary(cfg.out, res)
    if as_json:
        sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    else:
        click.echo(f"wrote {cfg.out} ({summary['rounds']} rounds, Flower run {res['run_id']})")


def node_data_specs(node_data: str | None, nodes: int | None, given: dict) -> list[str]:
    """`--node-data` as absolute specs (one SuperNode each; --nodes/--clients must agree); sets given["clients"]."""
    if node_data is None:
        return []
    from feddf.errors import FeddfError
    from feddf.flower.nodedata import check_specs

    specs = check_specs(node_data)
    for flag, v in (("--nodes", nodes), ("--clients", given.get("clients"))):
        if v is not None and v != len(specs):
            raise FeddfError(f"{flag} {v} --node-data with {len(specs)} specs: one SuperNode per spec; drop {flag}")
    given["clients"] = len(specs)
    return specs


def _summary(out: str, res: dict) -> dict:
    import json
    from pathlib import Path

    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"out": out, "rounds": len(rows), "final": rows[-1] if rows else None, "flower_run": res["run_id"]}
