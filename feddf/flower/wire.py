"""What travels between the Flower ServerApp and ClientApps: model states (each way one encoded payload in a
one-array `ArrayRecord`; the run's global models as a plain ArrayRecord), the run's resolved `TrainConfig` as a
JSON string in a `ConfigRecord` and, with node-local data, the server's task description (task_to_json).

    python -c "import torch; from feddf.flower.wire import to_record, from_record; \
s = {'w': torch.ones(2), 'n': torch.tensor(3)}; print(from_record(to_record(s), s))"

A node's model (model_to_record) is feddf.federated.precision's fp32 payload: floats as fp32, integer buffers as
they are. `to_record` (the global models Flower's Result holds) stores every tensor as fp32, because ArrayRecord
cannot hold bf16 and Flower's own averaging turns integer buffers (BatchNorm's num_batches_tracked) into floats;
`from_record` casts each one back to the dtype of a template state (the architecture's initial state): fp32 -> fp32
is exact and integers below 2**24 survive it. Either way a model that went over the wire is bit-identical to the
one that was sent.
"""
from __future__ import annotations

import dataclasses
import json

CONFIG_KEY = "feddf-config"   # ConfigRecord / run-config key holding the TrainConfig JSON
TASK_KEY = "feddf-task"       # with node-local data: the server's task (channels, size, classes, mean/std) as JSON


def to_record(state: dict):
    """A state_dict (name -> tensor) as an fp32 ArrayRecord (keys and order kept)."""
    from flwr.app import ArrayRecord

    return ArrayRecord({k: v.detach().to("cpu").float().contiguous() for k, v in state.items()})


def from_record(record, template: dict) -> dict:
    """An ArrayRecord back to a state_dict with the keys, dtypes and shapes of `template` (one line when not)."""
    return fit(record.to_torch_state_dict(), template)


def model_to_record(state: dict):
    """What the server sends a node: the model as one fp32 payload (precision.encode(state, "fp32"), the bytes
    `feddf train` counts as the download) in a one-array record. One Flower object per message instead of two per
    tensor: every object is a request on each hop (ServerApp -> SuperLink -> SuperNode -> ClientApp)."""
    from feddf.federated.precision import encode

    return payload_to_record(encode(state, "fp32"))


def model_from_record(record, template: dict) -> dict:
    """model_to_record's state with the keys, dtypes and shapes of `template`; exact (fp32 and integers as sent)."""
    from feddf.federated.precision import decode

    return fit(decode(payload_from_record(record))[1], template)


def fit(state: dict, template: dict) -> dict:
    """`state` (from the wire) cast to the dtypes of `template`, after checking its keys and shapes."""
    from feddf.errors import FeddfError

    if set(state) != set(template):
        extra, missing = sorted(set(state) - set(template)), sorted(set(template) - set(state))
        raise FeddfError(f"model on the wire does not fit its architecture (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}): every node must run the same feddf version and --arch list")
    out = {}
    for k, ref in template.items():
        v = state[k]
        if tuple(v.shape) != tuple(ref.shape):
            raise FeddfError(f"model on the wire: {k} has shape {tuple(v.shape)}, its architecture expects "
                             f"{tuple(ref.shape)}")
        out[k] = v.to(ref.dtype)
    return out


def payload_to_record(blob: bytes):
    """A client's encoded upload (feddf.federated.precision.encode: packed bits + scales, half or fp32 tensors) as a
    one-array uint8 ArrayRecord, so the wire carries exactly the bytes `feddf train` counts as the upload."""
    import torch
    from flwr.app import ArrayRecord

    return ArrayRecord({"payload": torch.frombuffer(bytearray(blob), dtype=torch.uint8)})


def payload_from_record(record) -> bytes:
    from feddf.errors import FeddfError

    state = record.to_torch_state_dict()
    if list(state) != ["payload"]:
        raise FeddfError("a model state arrived instead of an encoded payload: the server and every node must run "
                         "the same feddf version")
    return state["payload"].numpy().tobytes()


def contents(message) -> list[str]:
    """What a message carries, as sorted "record/key" names (no values): what the run folder records of a reply."""
    return sorted(f"{name}/{key}" for name, record in message.content.items() for key in record.keys())


def task_to_json(info) -> str:
    """What a node needs of the server's task (a DatasetInfo) to check and normalise its own data."""
    return json.dumps({"channels": info.channels, "size": info.size, "num_classes": info.num_classes,
                       "class_names": list(info.class_names), "mean": list(info.mean), "std": list(info.std)})


def task_from_json(text: str) -> dict:
    return json.loads(text)


def config_to_json(cfg) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def config_from_json(text: str):
    from feddf.federated.config import FIELDS, TrainConfig

    return TrainConfig(**{k: v for k, v in json.loads(text).items() if k in FIELDS})
