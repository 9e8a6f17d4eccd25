"""A long-lived ClientApp process for one SuperNode started with `--isolation process`: it takes the node's
ClientApp tasks one after another and runs each of them here, so torch, feddf's training code and the node's loaded
partition (client_app._TASKS) stay in memory from one message to the next.

    flower-supernode --insecure --superlink 127.0.0.1:9092 --isolation process --port 9094 --node-config ...
    python -m feddf.flower.worker --runtime-api-address 127.0.0.1:9094 --parent-pid <the SuperNode's pid>

Why: with Flower 1.42's default `--isolation subprocess` the SuperNode's SuperExec starts a fresh `flwr-clientapp`
process for every message, and that process handles the one message and exits (run_clientapp ends in flwr_exit,
which also arms a forced os._exit). Every reply then pays an interpreter, Flower's imports, torch's, feddf's and the
loading of the partition. `--isolation process` lets another process claim the node's tasks over the SuperNode's
Runtime API; this one does, per task, what `flwr-clientapp` does: claim it (AcquireTask), keep its token alive
(task heartbeats), pull the message, context and FAB, install the FAB (a no-op once installed), load the FAB's
ClientApp (flwr imports the module once per process), call it, push the reply and the context, report the status.
A ClientApp that raises is answered with Flower's error reply, as `flwr-clientapp` answers it, and the worker goes
on with the next task. It serves any ClientApp FAB; it preloads feddf's, because that is what it is for.
"""
from __future__ import annotations

import argparse
import sys
import time

POLL_SECONDS = 0.2   # between AcquireTask calls while idle (flower-superexec: 1 s); 0.05 s cost 0.09 CPU-s/s per node


def _client(address: str, token: str | None = None):
    """A Runtime API client; with `token`, one task's (as flwr-clientapp's). Transport errors are retried (the
    task's calls for a minute; the worker's own until the SuperNode listens: --parent-pid ends the worker when the
    SuperNode is gone), HTTP errors raise: Flower's own retry invoker answers an expired token (401) by
    interrupting the whole process, which suits a process per task but not this one."""
    import httpx
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import RetryInvoker, exponential
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp" if token else "SuperExec")]
    if token:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    retry = RetryInvoker(lambda: exponential(max_delay=2), httpx.TransportError, max_tries=None,
                        max_time=60 if token else None)
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=True, root_certificates=None,
                                                 interceptors=interceptors,
                                                 retry_invoker=retry)


def _heartbeat_fn(client):
    """The task heartbeat (flwr.supercore.heartbeat), without Flower's SIGINT when the SuperNode refuses it: a
    refused heartbeat means this task expired (the SuperNode answers it with an error), not that we must exit."""
    import httpx
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

    def fn() -> bool:
        try:
            client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
        except httpx.HTTPError:
            return False
        return True

    return fn


def pull_task_input(client):
    """(message, context, run, fab) of the claimed task, as flwr-clientapp pulls them, but retrying the message's
    objects every 0.05-0.5 s instead of Flower's 1, 2, 4 .. 10 s: this worker claims a task the moment the SuperNode
    creates it, while the node is still downloading the model from the SuperLink (a process started per message
    hid that wait; with Flower's backoff it was 1.6-4.6 s per TRAIN message here, 0.1-0.3 s with this one)."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf, make_pull_object_fn_protobuf)
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, run.run_id, context.node_id
    msgs = client.PullMessages(PullAppMessagesRequest())
    if not msgs.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    tree, node = msgs.message_object_trees[0], Node(node_id=context.node_id)
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=0.05, backoff_cap=0.5, max_tries_per_object=None)
    message.metadata.__dict__["_message_id"] = tree.object_id  # the deflated message does not carry its own id
    return message, context, run, fab


def run_task(address: str, token: str) -> str:
    """Run one claimed ClientApp task in this process; its sub-status ("completed" / "failed")."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    client = _client(address, token)
    heartbeat = HeartbeatSender(_heartbeat_fn(client))
    message = context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        heartbeat.start()
        message, context, run, fab = pull_task_input(client)
        install_from_fab(fab.content, skip_prompt=True)
        app = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
            run.fab_id, run.fab_version, fab.hash_str)
        reply = app(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as ex:  # noqa: BLE001 - the ClientApp's error goes back to the server as Flower's error reply
        code, reason = ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(ex)}:<'{ex}'>"
        if isinstance(ex, LoadClientAppError):
            code, reason = ErrorCode.LOAD_CLIENT_APP_EXCEPTION, "An exception was raised when attempting to load " \
                                                                "`ClientApp`"
        print(f"[feddf worker] ClientApp raised {reason}", file=sys.stderr, flush=True)
        details = reason
        if message is not None:
            reply = Message(Error(code=code, reason=reason), reply_to=message)
    try:
        if reply is not None and context is not None:
            push_message(client, reply, context)
        push_task_output(client=client, context=context, sub_status=status, details=details)
    except Exception as ex:  # noqa: BLE001 - e.g. the run was stopped meanwhile: this task is over, the next one comes
        print(f"[feddf worker] could not push the reply: {ex!r}", file=sys.stderr, flush=True)
        status = SubStatus.FAILED
    finally:
        heartbeat.stop()
        client.close()
    return status


def serve(address: str, poll: float = POLL_SECONDS) -> None:
    """Claim and run the SuperNode's ClientApp tasks one at a time, until the process is stopped."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    from feddf.flower import client_app

    client = _client(address)
    try:
        while True:
            res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
            if not (res.HasField("task") and res.token):
                time.sleep(poll)
                continue
            client_app.task_claimed_at = time.perf_counter()  # the reply's `process` time starts here
            status = run_task(address, res.token)
            print(f"[feddf worker] task {res.task.task_id} {status} in "
                  f"{time.perf_counter() - client_app.task_claimed_at:.2f} s", file=sys.stderr, flush=True)
    finally:
        client.close()


def preload() -> None:
    """Import what a TRAIN message needs now, while the node waits for its first message: feddf's training code and
    torch._dynamo, which the first torch.optim optimizer of a process imports (2-5 s here, else in round 1)."""
    import torch._dynamo  # noqa: F401

    import feddf.federated.fusion  # noqa: F401
    import feddf.federated.setup  # noqa: F401
    import feddf.flower.client_app  # noqa: F401
    import feddf.flower.wire  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m feddf.flower.worker", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime-api-address", required=True,
                    help="The SuperNode's Runtime API, host:port (flower-supernode --host/--port).")
    ap.add_argument("--parent-pid", type=int, default=None, help="Exit when this process (the SuperNode) exits.")
    ap.add_argument("--poll", type=float, default=POLL_SECONDS, help="Seconds between task polls while idle.")
    args = ap.parse_args(argv)
    if args.parent_pid is not None:
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(args.parent_pid)  # SIGINT -> KeyboardInterrupt here when the SuperNode is gone
    preload()
    try:
        serve(args.runtime_api_address, args.poll)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
