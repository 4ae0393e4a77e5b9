"""Checkpoints for resuming: atomic, verifiable, safely loaded.

Layout: <run_dir>/checkpoints/step_<N>/ holds DeepSpeed's files (trainable weights, optimizer partitions, LR
scheduler, client state), one RNG file per rank, the weights a method trained earlier but froze now (LISA's
inactive layers) and the buffers it changes in training (SwitchLoRA's candidate pools), in
trained_frozen.safetensors, and tuneforge.json: step, world size, data position, method state
and the manifest (size and sha256 of every file).

Save protocol (every rank takes part):
 1. every rank writes into checkpoints/.incoming-step_<N>/ (DeepSpeed files, its RNG file);
 2. all ranks agree that every write succeeded (a failure on any rank aborts the save: the incoming directory
    is removed and the run stops with an error naming the step, the path and the cause);
 3. rank 0 fsyncs every file, writes the manifest (write-to-temp, fsync, rename), and commits by renaming the
    directory to step_<N> (then fsyncs the parent);
 4. only then are checkpoints beyond `keep_last` deleted, oldest first: the previous good checkpoint always
    exists until the new one is committed.
A process killed at any point leaves either the old set of committed checkpoints or the new one, plus possibly a
directory that is not a committed checkpoint; resuming moves such directories to checkpoints/quarantine/ with a
warning.

Topology changes (another number of ranks or ZeRO stage): `tuneforge ckpt convert DIR` turns a ZeRO-1/2/3
checkpoint into DeepSpeed's universal format (DIR/universal, with its own manifest; DeepSpeed's
ds_to_universal), which any topology loads; resuming such a run without it fails with the command to run.
ZeRO-0 checkpoints hold full optimizer states and resume on any number of ranks at ZeRO-0 as they are.

Loading verifies the manifest first (a missing, truncated or altered file refuses the resume, naming it), and
DeepSpeed's pickled files are read with torch.load(weights_only=True) allowing only three DeepSpeed data classes:
a planted pickle payload is never executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from tuneforge.distributed import dist
from tuneforge.errors import InputError, RunError
from tuneforge.runner import faults
from tuneforge.runner.weights import load_named, save_named

MARKER = "tuneforge.json"
FROZEN = "trained_frozen.safetensors"
INCOMING = ".incoming-"
REPLACED = ".replaced-"
QUARANTINE = "quarantine"
UNIVERSAL = "universal"


# ---------------------------------------------------------------------- RNG
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------- files
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(directory: Path) -> list[str]:
    """Files a manifest covers: everything but the manifest itself and a converted universal/ copy."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if p.is_file() and p.name != MARKER and p.relative_to(directory).parts[0] != UNIVERSAL)


def _manifest(directory: Path) -> dict:
    files = {}
    for rel in _files(directory):
        _fsync(directory / rel)
        files[rel] = {"size": (directory / rel).stat().st_size, "sha256": _sha256(directory / rel)}
    return files


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


# ---------------------------------------------------------------------- save
def save(engine, run_dir: Path, step: int, client_state: dict, meta: dict, keep_last: int, lm, frozen: set[str]) -> Path:
    root = run_dir / "checkpoints"
    tag = f"step_{step}"
    incoming, final = root / f"{INCOMING}{tag}", root / tag
    if dist.is_main():
        shutil.rmtree(incoming, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY
    from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_VERSION_VALUE as VERSION

    client_state = {**client_state, UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: VERSION}}
    error = None
    try:
        faults.at_save("writing", step)
        engine.save_checkpoint(str(root), tag=incoming.name, client_state=client_state, save_latest=False,
                               exclude_frozen_parameters=True)
        torch.save(rng_state(), incoming / f"rng_rank{dist.rank()}.pt")
        if frozen:
            save_named(lm, incoming / FROZEN, frozen)
    except OSError as e:
        error = f"{type(e).__name__}: {e}"
    failures = dist.all_sum([error is not None])[0]
    if failures:
        if dist.is_main():
            shutil.rmtree(incoming, ignore_errors=True)
        previous = complete(run_dir)
        keep = f"; the previous checkpoint {previous[-1]} is intact" if previous else ""
        raise RunError(f"saving the checkpoint of step {step} to {incoming} failed on {int(failures)} rank(s): "
                       f"{error or 'see the other ranks'}{keep}")
    faults.at_save("ds_written", step)
    dist.barrier()
    if dist.is_main():
        write_json_atomic(incoming / MARKER, {"step": step, "world_size": dist.world(),
                                              "zero_stage": engine.zero_optimization_stage(), **meta,
                                              "files": _manifest(incoming)})
        faults.at_save("manifest_written", step)
        _commit(incoming, final)
        faults.at_save("committed", step)
        for old in complete(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _commit(incoming: Path, final: Path) -> None:
    """Make `incoming` visible as `final` by rename (an existing checkpoint of the same step is replaced)."""
    replaced = None
    if final.exists():
        replaced = final.with_name(f"{REPLACED}{final.name}")
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(final, replaced)
    os.rename(incoming, final)
    _fsync(final.parent)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


# ---------------------------------------------------------------------- find, verify
def complete(run_dir: Path) -> list[Path]:
    """Committed checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.glob("step_*") if (p / MARKER).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def quarantine(run_dir: Path) -> list[Path]:
    """Move what is not a committed checkpoint out of the way (returns the new locations)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    moved = []
    for p in sorted(root.iterdir()):
        if p.name == QUARANTINE or not p.is_dir() or (p.name.startswith("step_") and (p / MARKER).is_file()):
            continue
        dest = root / QUARANTINE / f"{p.name.lstrip('.')}-{time.strftime('%Y%m%d-%H%M%S')}"
        dest.parent.mkdir(exist_ok=True)
        os.rename(p, dest)
        moved.append(dest)
    return moved


def verify(path: Path) -> list[str]:
    """Every problem with a checkpoint directory (empty list: it is complete and intact)."""
    path = Path(path)
    if not (path / MARKER).is_file():
        return [f"{path}: no {MARKER}: not a committed checkpoint (incomplete save?)"]
    try:
        files = json.loads((path / MARKER).read_text())["files"]
    except (json.JSONDecodeError, KeyError) as e:
        return [f"{path / MARKER}: unreadable manifest ({e})"]
    problems = []
    for rel, want in files.items():
        f = path / rel
        if not f.is_file():
            problems.append(f"missing file: {f}")
        elif f.stat().st_size != want["size"]:
            problems.append(f"truncated or resized file: {f} ({f.stat().st_size} bytes, manifest says {want['size']})")
        elif _sha256(f) != want["sha256"]:
            problems.append(f"corrupt file: {f} (sha256 differs from the manifest)")
    problems += [f"unexpected file (not in the manifest): {path / rel}" for rel in _files(path) if rel not in files]
    return problems


def resolve(resume: str, run_dir: Path, console=None) -> Path | None:
    """The checkpoint `trainer.resume` points at (None: start fresh). Rank 0 decides and quarantines."""
    chosen = None
    if dist.is_main():
        if resume == "auto":
            for moved in quarantine(run_dir):
                if console is not None:
                    console.print(f"[yellow]warning:[/] incomplete checkpoint moved to {moved}")
            found = complete(run_dir)
            chosen = str(found[-1]) if found else None
        elif resume != "none":
            path = Path(resume)
            found = [path] if (path / MARKER).is_file() else complete(path)
            chosen = str(found[-1]) if found else f"!{resume}"
    chosen = dist.broadcast_object(chosen)
    if chosen and chosen.startswith("!"):
        raise InputError([f"trainer.resume={chosen[1:]}: not a committed tuneforge checkpoint or run directory"])
    return Path(chosen) if chosen else None


def read_meta(path: Path) -> dict:
    return json.loads((path / MARKER).read_text())


# ---------------------------------------------------------------------- load
def _allowed() -> list:
    """The plain data classes DeepSpeed pickles into its checkpoint files (nothing else may be unpickled)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address, *_optimizer_state_classes()]


def _optimizer_state_classes() -> list:
    """Tensor subclasses that torchao's low-bit optimizers (optim=ao_adamw8bit, ao_adamw4bit) keep their moments in:
    only when such an optimizer is in use (it imported them), so a run without one refuses them too."""
    import sys

    if "torchao.optim" not in sys.modules:
        return []
    from torchao.optim.subclass_4bit import OptimState4bit
    from torchao.optim.subclass_8bit import OptimState8bit

    return [OptimState4bit, OptimState8bit]


def _safe_torch_load():
    """DeepSpeed reads its checkpoint files with torch.load(weights_only=False); make it weights_only=True, with
    the three plain data classes DeepSpeed pickles allowed, so a planted pickle payload cannot run."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    def load(self, path: str, map_location=None):
        if callable(map_location):  # DeepSpeed's only one is `lambda storage, loc: storage`: the CPU. torch refuses
            map_location = "cpu"  # callables for tensor subclasses (torchao's optimizer states)
        with torch.serialization.safe_globals(_allowed()):
            try:
                return torch.load(path, map_location=map_location, weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unpickling failure means: do not trust this file
                raise InputError([f"refusing to load {path}: it holds objects a checkpoint never contains "
                                  f"({str(e).splitlines()[0][:200]})"], title="unsafe checkpoint") from None

    TorchCheckpointEngine.load = load


def topology_change(meta: dict, world: int, stage: int) -> str | None:
    """How the checkpoint's topology differs from this run's (None: it loads as it is)."""
    if meta["world_size"] == world and meta.get("zero_stage", stage) == stage:
        return None
    if meta.get("zero_stage") == 0 and stage == 0:
        return None  # full optimizer states on every rank
    return (f"written by {meta['world_size']} rank(s) with ZeRO-{meta.get('zero_stage')}, this run has {world} "
            f"rank(s) with ZeRO-{stage}")


def needs_universal(path: Path, world: int, stage: int) -> bool:
    """Whether resuming from `path` needs its universal copy; an InputError (with the fix) if it has none."""
    meta = read_meta(path)
    change = topology_change(meta, world, stage)
    if change is None:
        return False
    if meta.get("zero_stage") == 0:
        raise InputError([f"checkpoint {path} ({change}): a ZeRO-0 checkpoint resumes only at ZeRO-0 "
                          "(any number of ranks); set zero=zero0"])
    if not (path / UNIVERSAL / MARKER).is_file():
        raise InputError([f"checkpoint {path} was {change}: convert it first with `tuneforge ckpt convert {path}`, "
                          "then resume again"])
    return True


def convert(path: Path) -> Path:
    """DIR/universal: DeepSpeed's universal checkpoint of the ZeRO-1/2/3 checkpoint DIR (committed atomically)."""
    import subprocess
    import sys

    problems = verify(path)
    if problems:
        raise InputError(problems, title="damaged checkpoint")
    if read_meta(path).get("zero_stage", 0) == 0:
        raise InputError([f"{path} is a ZeRO-0 checkpoint: it needs no conversion (it resumes on any number of "
                          "ranks at ZeRO-0)"])
    grouped = _grouped_states(path)
    if grouped:
        meta = read_meta(path)
        raise InputError([f"{path} cannot be converted to the universal format: its optimizer states {grouped} hold "
                          "one value per group of elements of each rank's flat ZeRO partition (e.g. the scales of "
                          "FP8 states), which cannot be cut into per-parameter pieces for another topology. Resume "
                          f"it as it was written ({meta['world_size']} rank(s), zero=zero{meta.get('zero_stage')}), "
                          f"or export its weights (`tuneforge export run_dir={path.parent.parent}`) and start a new "
                          "run from them (model.path=<run_dir>/export)"], title="checkpoint not convertible")
    incoming, final = path / f"{INCOMING}{UNIVERSAL}", path / UNIVERSAL
    shutil.rmtree(incoming, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(path),
                           "--output_folder", str(incoming)], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(incoming, ignore_errors=True)
        raise RunError(f"DeepSpeed's ds_to_universal failed on {path}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    (path / "latest_universal").unlink(missing_ok=True)  # DeepSpeed's pointer file; tuneforge does not use it
    _extra_states(path, incoming)
    shutil.copy2(path / MARKER, incoming / "source.json")
    write_json_atomic(incoming / MARKER, {**read_meta(path), "universal": True, "files": _manifest(incoming)})
    _commit(incoming, final)
    return final


def _grouped_states(path: Path) -> list[str]:
    """Optimizer-state keys of a ZeRO-1/2 checkpoint holding fewer values than the rank's partition (one per
    group of elements, not one per element): they have no per-parameter fragments."""
    files = sorted(path.glob("*zero_pp_rank_0_*optim_states.pt"))
    if not files:
        return []
    with torch.serialization.safe_globals(_allowed()):
        sd = torch.load(files[0], map_location="cpu", weights_only=True)["optimizer_state_dict"]
    flats = sd.get("single_partition_of_fp32_groups") or []
    states = sd.get("base_optimizer_state", {})
    states = states.get("state", {}) if isinstance(states, dict) else {}
    return sorted({k for g, st in states.items() for k, v in st.items() if torch.is_tensor(v) and v.dim() > 0
                   and g < len(flats) and v.numel() != flats[g].numel()})


def _extra_states(path: Path, out: Path) -> None:
    """The per-element optimizer states that ds_to_universal leaves out (it writes fp32, exp_avg, exp_avg_sq and
    step only), e.g. ElementStepAdamW's element_step: each parameter's fragment is cut from every rank's ZeRO-1/2
    partition (DeepSpeed's param_slice_mappings), joined in rank order and saved as zero/<name>/<key>.pt, the
    format of the others."""
    files = {}
    for f in path.glob("*zero_pp_rank_*_optim_states.pt"):
        files[int(f.name.split("zero_pp_rank_")[1].split("_")[0])] = f
    pieces: dict[tuple[str, str], list[torch.Tensor]] = {}
    for rank in sorted(files):
        with torch.serialization.safe_globals(_allowed()):
            sd = torch.load(files[rank], map_location="cpu", weights_only=True)["optimizer_state_dict"]
        states = sd.get("base_optimizer_state", sd.get("optimizer_state_dict", {}))  # ZeRO-1/2, ZeRO-3
        states = states.get("state", {}) if isinstance(states, dict) else dict(enumerate(states))
        extra = [(g, k) for g, st in states.items() for k, v in st.items()
                 if k not in ("exp_avg", "exp_avg_sq") and torch.is_tensor(v) and v.dim() > 0]
        if extra and "param_slice_mappings" not in sd:
            raise RunError(f"{files[rank]}: per-element optimizer states {sorted({k for _, k in extra})} of a ZeRO-3 "
                           "checkpoint cannot be converted to the universal format")
        for g, key in extra:
            for name, frag in sd["param_slice_mappings"][g].items():
                pieces.setdefault((name, key), []).append(states[g][key].narrow(0, frag.start, frag.numel))
    for (name, key), parts in pieces.items():
        d = out / "zero" / name
        shape = torch.load(d / "fp32.pt", weights_only=True)["param"].shape
        torch.save({"param": torch.cat(parts).view(shape)}, d / f"{key}.pt")


def load(engine, path: Path, lm, universal: bool = False) -> dict:
    source = path / UNIVERSAL if universal else path
    problems = verify(source) if dist.is_main() else []
    problems = dist.broadcast_object(problems)
    if problems:
        raise InputError(problems + [f"refusing to resume from {source}: choose another checkpoint with "
                                     "trainer.resume=<dir>, or delete it"], title="damaged checkpoint")
    _safe_torch_load()
    if universal:
        client = _load_universal(engine, source)
    else:
        _, client = engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=False)
    if (path / FROZEN).is_file():
        load_named(lm, path / FROZEN)
    rng_file = path / f"rng_rank{dist.rank()}.pt"  # a rank the checkpoint did not have keeps its seeded state
    if rng_file.is_file():
        try:
            set_rng_state(torch.load(rng_file, weights_only=True))
        except Exception as e:  # noqa: BLE001 - an RNG file holds tensors, ints and tuples only
            raise InputError([f"refusing to load {rng_file}: not a tuneforge RNG state "
                              f"({str(e).splitlines()[0][:200]})"], title="unsafe checkpoint") from None
    return client or {}


def _load_universal(engine, source: Path) -> dict:
    """Load DeepSpeed's universal checkpoint (one directory of full tensors per parameter: fp32 master, Adam
    moments, step) into an engine of any stage and world size, parameter by parameter: module weight and the
    engine's own fp32 master / moments through DeepSpeed's safe_set_full_* API (optim_state.put)."""
    from tuneforge.distributed import optim_state as ostate
    from tuneforge.distributed.params import assign

    ostate.materialize(engine)
    for name, p in engine.module.named_parameters():
        if not p.requires_grad:
            continue
        d = source / "zero" / name
        if not d.is_dir():
            raise InputError([f"universal checkpoint {source} has no state for parameter {name}: it was written "
                              "for another model or tuning method"])
        keys = ["fp32", *sorted(f.stem for f in d.glob("*.pt") if f.stem not in ("fp32", "step"))]
        tensors = {k: torch.load(d / f"{k}.pt", weights_only=True)["param"] for k in keys}
        assign(p, tensors["fp32"])
        try:
            ostate.put(engine, p, {**tensors, "step": int(torch.load(d / "step.pt", weights_only=True))})
        except ValueError as e:  # e.g. per-element Adam steps the checkpoint does not have
            raise InputError([f"universal checkpoint {source} does not fit this run's optimizer at {name}: {e}; "
                              "convert the checkpoint again with this version of tuneforge"]) from None
    states = sorted(source.glob("*model_states.pt"))
    return engine.checkpoint_engine.load(str(states[0]), map_location="cpu") if states else {}
