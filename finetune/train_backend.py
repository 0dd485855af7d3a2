"""The Ray Train backend of a `ray_train` trial: TF_CONFIG on every worker, and nothing imported.

Ray's own `TensorflowTrainer` does the same set-up (ray/train/tensorflow/config.py), but reaching
its `TensorflowConfig` imports the `ray.train.tensorflow` package, whose `__init__` imports
TensorFlow: in the Tune trial that builds the trainer and again in the Train controller that
unpickles it, about 5 s of CPU each per trial on this project's 2-core machine, for processes that
never run a TensorFlow op (docs/benchmarks.md, "Where a Ray Train trial's start-up goes"). This
backend is the same few lines through Ray Train's backend extension point (`ray.train.backend`,
a DeveloperAPI), so only the workers, which train, import TensorFlow.

`TF_USE_LEGACY_KERAS`, which Ray's backend also sets (ray-project/ray#64276), is left alone: the
loop imports Keras 3 itself (`import keras`) and never `tf.keras`.
"""

from __future__ import annotations

import json
import os
import socket

from ray.train.backend import Backend, BackendConfig


def _address_and_free_port() -> str:
    """This worker's node address and a port free on it, for TensorFlow's collective server."""
    import ray

    address = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    return f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}"


def _set_tf_config(worker_addresses: list[str], index: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": worker_addresses},
                                          "task": {"type": "worker", "index": index}})


class _MultiWorkerBackend(Backend):
    def on_start(self, worker_group, backend_config) -> None:
        import ray

        addresses = worker_group.execute(_address_and_free_port)
        ray.get([worker_group.execute_single_async(rank, _set_tf_config, worker_addresses=addresses, index=rank)
                 for rank in range(len(worker_group))])


class MultiWorkerConfig(BackendConfig):
    """What `TensorflowTrainer` passes Ray Train as its backend, minus the TensorFlow import."""

    @property
    def backend_cls(self):
        return _MultiWorkerBackend
