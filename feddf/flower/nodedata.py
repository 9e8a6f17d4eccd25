"""Node-local data: the Task a SuperNode builds from its own `data="SPEC"` node config, checked against the run's
task (channels, resolution, classes) that the server describes in every TRAIN message (wire.task_to_json).

    python -c "from feddf.flower.nodedata import check_node_data; import torch; \
check_node_data(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1]), 2, \
{'channels': 1, 'size': 28, 'num_classes': 10})"

The node never sends its data or its spec: a refusal is one line that names no path (the reply goes to the server
and into its run folder); why a spec could not be loaded at all goes to the node's own log only. The node normalises
its images with the server task's mean/std, so its model sees what the server's validation and test passes see.
"""
from __future__ import annotations

import sys

import numpy as np

from feddf.errors import FeddfError


def check_specs(text: str) -> list[str]:
    """`--node-data SPEC,SPEC,...` -> absolute specs, one per SuperNode, each checked without loading it (a known
    name, or an existing folder/npz/cache path); one line otherwise."""
    from feddf.data import byo, check_dataset

    specs = [s.strip() for s in text.split(",")]
    if not all(specs):
        raise FeddfError(f"--node-data {text!r}: give one dataset spec per SuperNode, comma-separated, none empty")
    out = []
    for spec in specs:
        if any(c in spec for c in "\"'\\"):
            raise FeddfError(f"--node-data {spec}: quotes and backslashes cannot go into a node config; rename the "
                             "path")
        check_dataset(spec, "--node-data")
        out.append(str(byo.parse(spec)) if byo.is_byo(spec) else spec)
    return out


def check_node_data(images, labels, num_classes: int, task: dict) -> None:
    """One FeddfError line (no path) when a node's (N, C, H, W) uint8 images / (N,) labels (num_classes: what its
    dataset declares) do not fit the run's `task` {channels, size, num_classes}."""
    c, s, k = int(task["channels"]), int(task["size"]), int(task["num_classes"])
    if len(labels) == 0:
        raise FeddfError("this node's data= holds no images: give it a labelled set with at least one image")
    shape = tuple(int(v) for v in images.shape[1:])
    if shape != (c, s, s):
        raise FeddfError(f"this node's data= holds {'x'.join(map(str, shape))} images but the run's task (the "
                         f"server's --server-data) is {c}x{s}x{s}: give the node data of the task's shape")
    unlabelled = int((labels < 0).sum())
    if unlabelled:
        raise FeddfError(f"this node's data= has {unlabelled} unlabelled images of {len(labels)}: a client trains "
                         "on labelled images")
    top = int(labels.max())
    if num_classes > k or top >= k:
        raise FeddfError(f"this node's data= has {max(num_classes, top + 1)} classes (labels up to {top}) but the "
                         f"run's task has {k} (labels 0..{k - 1}): label the node's images with the task's classes")


def node_task(cfg, task: dict, spec: str, k: int, arch: str, data_root: str | None = None):
    """The Task of client k on this node: all of `spec` (a feddf dataset spec) as its training data, the server's
    task description `task` (wire.task_from_json) as its DatasetInfo; FeddfError (one line, no path) otherwise."""
    from feddf.data import DatasetInfo, get_dataset
    from feddf.federated.setup import Task, client_precisions

    try:
        data = get_dataset(spec, data_root or None)
    except FeddfError as e:
        print(f"[feddf node] data={spec}: {e}", file=sys.stderr, flush=True)  # this node's log only
        raise FeddfError("this node's data= could not be loaded: its SuperNode's log says why") from None
    check_node_data(data.images, data.labels, data.info.num_classes, task)
    n_classes = int(task["num_classes"])
    info = DatasetInfo(name="server task", channels=int(task["channels"]), size=int(task["size"]),
                       num_classes=n_classes, class_names=tuple(task["class_names"]), mean=tuple(task["mean"]),
                       std=tuple(task["std"]), splits=())
    empty = np.zeros(0, dtype=np.int64)
    hist = np.zeros((cfg.clients, n_classes), dtype=np.int64)
    hist[k] = np.bincount(data.labels.numpy(), minlength=n_classes)
    return Task(cfg=cfg, info=info, train_images=data.images, train_labels=data.labels, val_idx=empty,
                client_indices=[np.arange(len(data)) if i == k else empty for i in range(cfg.clients)],
                client_arch=[arch] * cfg.clients, hist=hist, test_images=data.images[:0],
                test_labels=data.labels[:0], test_spec="", data_files=[], source=None, param_names={},
                client_precision=client_precisions(cfg))
