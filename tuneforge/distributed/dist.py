"""Process-group helpers. Every rank runs the same code; rank 0 writes files and prints."""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import socket
import time

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


def peer_failure(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another rank went away (gloo/NCCL connection errors,
    a collective timeout)."""
    text = str(error).lower()
    return isinstance(error, td.DistError) or (isinstance(error, RuntimeError) and any(
        w in text for w in ("gloo", "nccl", "connection closed", "connection reset", "timed out", "broken pipe")))


def lost_peers(ranks_per_node: int, wait_s: float = 3.0) -> str | None:
    """After a failure with the process group up: which ranks are gone (a dead node, a killed rank). Every rank
    still alive checks in with the rendezvous store (hosted by node 0); the ranks that have not within `wait_s`
    are named with their node. None when all answered (the failure is not a lost peer) or with one rank."""
    if not td.is_initialized() or world() < 2:
        return None
    try:
        store = td.distributed_c10d._get_default_store()
        store.set(f"tuneforge/alive/{rank()}", "1")
        deadline, missing = time.monotonic() + wait_s, []
        while True:
            missing = [r for r in range(world()) if not store.check([f"tuneforge/alive/{r}"])]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    except Exception:  # noqa: BLE001 - the store itself is gone: so is its host, rank 0 on node 0
        missing = [0]
    if not missing:
        return None
    names = ", ".join(f"rank {r} (node {r // max(ranks_per_node, 1)})" for r in missing)
    return f"lost {names}: it stopped answering (its process or node died)"


def shutdown() -> None:
    """Destroy the process group through DeepSpeed, which also drops its cached groups: a later run in the same
    process (tests run many one-rank runs in-process) starts from a clean slate."""
    if td.is_initialized():
        import deepspeed.comm

        deepspeed.comm.destroy_process_group()
    for key in _PRIVATE:
        os.environ.pop(key, None)
    _PRIVATE.clear()
