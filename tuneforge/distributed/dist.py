"""Process-group helpers. Every rank runs the same code; rank 0 writes files and prints."""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import socket

import torch
import torch.distributed as td


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PRIVATE: dict[str, str] = {}  # the rendezvous variables init() set for a single in-process rank


def init(device_type: str, timeout_s: int = 600) -> None:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on CUDA); a single in-process rank
    gets a private port so parallel runs never collide."""
    os.environ.setdefault("DS_ACCELERATOR", device_type)  # no probing (and no warning) on CPU machines
    import deepspeed

    if td.is_initialized():
        return
    if "RANK" not in os.environ:  # taken back by shutdown(): child processes never inherit this rank's address
        _PRIVATE.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        os.environ.update(_PRIVATE)
    with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed prints op-build chatter here
        deepspeed.init_distributed(dist_backend="nccl" if device_type == "cuda" else "gloo", verbose=False,
                                   timeout=datetime.timedelta(seconds=timeout_s))


def rank() -> int:
    return td.get_rank() if td.is_initialized() else 0


def world() -> int:
    return td.get_world_size() if td.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if td.is_initialized() and world() > 1:
        td.barrier()


def all_sum(values: list[float], device: str = "cpu") -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if td.is_initialized() and world() > 1:
        td.all_reduce(t)
    return t.tolist()


def broadcast_object(obj, src: int = 0):
    if not (td.is_initialized() and world() > 1):
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=src)
    return box[0]


def shutdown() -> None:
    """Destroy the process group through DeepSpeed, which also drops its cached groups: a later run in the same
    process (tests run many one-rank runs in-process) starts from a clean slate."""
    if td.is_initialized():
        import deepspeed.comm

        deepspeed.comm.destroy_process_group()
    for key in _PRIVATE:
        os.environ.pop(key, None)
    _PRIVATE.clear()
