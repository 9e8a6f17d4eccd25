"""The long-lived ClientApp worker (feddf/flower/worker.py) and the SuperNode's shorter idle poll
(feddf/flower/supernode.py) that `feddf flower local` runs by default (docs/flower.md, "ClientApp processes").

A real SuperLink + SuperNode (`--isolation process`) + worker on 127.0.0.1 serve a small probe Flower App: its
ClientApp raises on one message and answers the others with its process id, so the test sees that one process
answered every message, that a ClientApp error travels back as Flower's error reply, and that the worker goes on.
"""
import json
import time

import pytest

pytest.importorskip("flwr")

from tests.test_flower import leftovers  # noqa: E402

PROBE_TOML = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "probe"
version = "0.1.0"
license = "MIT"
dependencies = []

[tool.flwr.app]
publisher = "feddftest"

[tool.flwr.app.components]
serverapp = "probe_app:server"
clientapp = "probe_app:client"

[tool.flwr.app.config]
out = ""
"""

PROBE_APP = '''import json, os, time
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()


@client.query()
def answer(msg, context):
    n = int(msg.content["q"]["n"])
    if n == 2:
        raise RuntimeError("probe failure on message 2")
    return Message(RecordDict({"r": ConfigRecord({"pid": os.getpid(), "n": n})}), reply_to=msg)


@server.main()
def main(grid: Grid, context) -> None:
    while not (nodes := list(grid.get_node_ids())):
        time.sleep(0.2)
    out = []
    for n in (1, 2, 3):
        q = Message(RecordDict({"q": ConfigRecord({"n": n})}), dst_node_id=nodes[0], message_type=MessageType.QUERY)
        (reply,) = grid.send_and_receive([q], timeout=120)
        out.append({"error": reply.error.reason} if reply.has_error() else dict(reply.content["r"]))
    with open(context.run_config["out"], "w") as f:
        json.dump(out, f)
'''


def test_one_worker_process_answers_every_message_and_survives_a_clientapp_error(tmp_path):
    from feddf.flower.launch import LocalFlower

    app = tmp_path / "probe"
    app.mkdir()
    (app / "pyproject.toml").write_text(PROBE_TOML)
    (app / "probe_app.py").write_text(PROBE_APP)
    out = tmp_path / "replies.json"
    with LocalFlower([None], state_dir=tmp_path / "state", stream=False) as fl:
        p = fl.flwr("run", str(app), "feddf", "--stream", "--run-config", f'out="{out}"', timeout=300)
        run_id = p.stdout.split("Successfully started run ")[1].split()[0]
        status, details = fl.status(run_id)
        worker = fl.procs["clientapp-0"].pid
        pids = [q.pid for q in fl.procs.values()]
    assert status == "finished:completed", (details, p.stdout[-2000:], p.stderr[-2000:])
    replies = json.loads(out.read_text())
    assert [r.get("n") for r in replies] == [1, None, 3]
    assert "probe failure on message 2" in replies[1]["error"]
    assert replies[0]["pid"] == replies[2]["pid"] == worker  # the same process before and after the error
    log = (tmp_path / "state" / "clientapp-0.log").read_text()
    assert log.count(" completed in ") == 2 and log.count(" failed in ") == 1, log[-2000:]
    assert not leftovers(pids)


def test_the_supernode_waits_are_shortened_in_flowers_loop_only(monkeypatch):
    import time as time_module

    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError
    from flwr.supernode import start_client_internal as loop

    from feddf.flower.supernode import LOCAL_WAIT, patch_loop

    monkeypatch.setattr(loop, "time", time_module)  # both restored after the test
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    assert patch_loop(0.5)
    slept: list[float] = []
    monkeypatch.setattr(time_module, "sleep", slept.append)
    loop.time.sleep(3)      # the loop's idle wait for a message
    loop.time.sleep(0.5)    # its wait for the ClientApp's reply
    loop.time.sleep(0.01)   # shorter waits stay as they are
    time.sleep(3)           # everyone else's time module is untouched
    assert slept == [0.5, LOCAL_WAIT, 0.01, 3]
    assert loop.time is not time_module and loop.time.monotonic is time_module.monotonic
    monkeypatch.undo()  # the real time.sleep back, for Flower's pull backoff
    monkeypatch.setattr(loop, "time", time_module)
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    patch_loop(0.5)
    tries = []

    def pull(object_id):  # an object the SuperLink has only from the third try on
        tries.append(object_id)
        if len(tries) < 3:
            raise ObjectUnavailableError(object_id)
        return b"content"

    assert loop.pull_objects(["obj"], pull_object_fn=pull) == {"obj": b"content"} and len(tries) == 3
    assert loop.pull_objects.keywords["initial_backoff"] == LOCAL_WAIT  # Flower's own: 1 s
