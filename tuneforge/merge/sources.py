"""What is merged, read one tensor at a time, and the check that every input shares one base.

    ModelSource(dir, base_id)   an exported Hugging Face model (config.json + *.safetensors): tau = W - W_base
    AdapterSource(dir)          a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors): per adapted
                                linear tau = s * B A (s = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA),
                                the full delta the adapter adds, never A and B merged separately (merging the
                                factors is not merging the deltas: sum_t B_t A_t != (sum_t B_t)(sum_t A_t))

`base_problems` lists every way the inputs differ from the base (base model id, architecture fields, parameter
names and shapes), one line each, so a mismatch fails with all of them at once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

ARCH_FIELDS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "vocab_size", "tie_word_embeddings")


def arch_of(config: dict) -> dict:
    return {k: config.get(k) for k in ARCH_FIELDS if k in config}


class ModelSource:
    kind = "model"

    def __init__(self, path: Path, base_id: str | None):
        from safetensors import safe_open

        self.path, self.base_id = Path(path), base_id
        self.config = json.loads((self.path / "config.json").read_text())
        self._files = {}
        for f in sorted(self.path.glob("*.safetensors")):
            handle = safe_open(str(f), framework="pt")
            self._files.update({k: handle for k in handle.keys()})

    def names(self) -> set[str]:
        return set(self._files)

    def shape(self, name: str) -> tuple:
        return tuple(self._files[name].get_slice(name).get_shape())

    def tau(self, name: str, base: torch.Tensor) -> torch.Tensor | None:
        if name not in self._files:
            return None
        return self._files[name].get_tensor(name).float() - base.float()


class AdapterSource:
    kind = "adapter"

    def __init__(self, path: Path):
        from safetensors.torch import load_file

        self.path = Path(path)
        cfg = json.loads((self.path / "adapter_config.json").read_text())
        self.base_id = cfg.get("base_model_name_or_path")
        self.adapter_config, self.config = cfg, {}
        weights = load_file(str(self.path / "adapter_model.safetensors"))
        r, alpha = cfg["r"], cfg.get("lora_alpha", cfg["r"])
        self.scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        self.unsupported = []
        if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora"):
            self.unsupported.append(f"peft_type={cfg.get('peft_type')}, use_dora={cfg.get('use_dora')} (only plain "
                                    "LoRA / rsLoRA adapters merge as s * B A): merge its exported model instead")
        if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
            self.unsupported.append("per-module rank_pattern/alpha_pattern: merge its exported model instead")
        self.factors: dict[str, dict] = {}  # "<module>.weight" -> {"A": ..., "B": ...}
        for key, w in weights.items():
            module, _, part = key.rpartition(".lora_")
            if part not in ("A.weight", "B.weight"):
                self.unsupported.append(f"{key}: not a LoRA factor (modules_to_save / bias): merge its exported "
                                        "model instead")
                continue
            name = module.removeprefix("base_model.model.") + ".weight"
            self.factors.setdefault(name, {})[part[0]] = w

    def names(self) -> set[str]:
        return set(self.factors)

    def shape(self, name: str) -> tuple:
        f = self.factors[name]
        return (f["B"].shape[0], f["A"].shape[1])

    def tau(self, name: str, base: torch.Tensor) -> torch.Tensor | None:
        f = self.factors.get(name)
        if f is None:
            return None
        delta = self.scaling * (f["B"].float() @ f["A"].float())
        return delta.T if self.adapter_config.get("fan_in_fan_out") else delta


def open_source(path: Path, base_id: str | None):
    """The input at `path`; `base_id`: what it was tuned from when known (None: unknown, or an adapter's own)."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        source = AdapterSource(path)
        source.base_id = base_id or source.base_id
        return source
    if (path / "config.json").is_file() and list(path.glob("*.safetensors")):
        return ModelSource(path, base_id)
    raise FileNotFoundError(f"{path}: neither a Hugging Face model (config.json + *.safetensors) nor a PEFT adapter "
                            "(adapter_config.json) nor a tuneforge run directory (config.yaml)")


def base_problems(sources: list, base_config: dict, base_shapes: dict[str, tuple], most: int = 4) -> list[str]:
    """Every difference between the inputs and the base, one line each (empty: they share the base): base model
    ids differing between inputs (where known), architecture fields and tensor names/shapes differing from the
    base's (at most `most` tensors named per input)."""
    out, want = [], arch_of(base_config)
    known = [(i, s) for i, s in enumerate(sources, 1) if s.base_id]
    for i, s in enumerate(sources, 1):
        who = f"input {i} ({s.path}) does not share the base"
        out += [f"{who}: {p}" for p in getattr(s, "unsupported", [])]
        if known and s.base_id and str(s.base_id) != str(known[0][1].base_id):
            j, ref = known[0]
            out.append(f"{who}: tuned from {s.base_id!r}, but input {j} from {ref.base_id!r}")
        for k, v in arch_of(s.config).items():
            if want.get(k) is not None and v is not None and want[k] != v:
                out.append(f"{who}: {k}={v}, but the base has {k}={want[k]}")
        names = s.names()
        unknown = sorted(n for n in names if n not in base_shapes)
        if unknown:
            out.append(f"{who}: {len(unknown)} tensor(s) the base does not have, e.g. {', '.join(unknown[:3])}")
        bad = [n for n in sorted(names) if n in base_shapes and tuple(s.shape(n)) != tuple(base_shapes[n])]
        out += [f"{who}: {n} has shape {list(s.shape(n))}, the base {list(base_shapes[n])}" for n in bad[:most]]
        if len(bad) > most:
            out.append(f"{who}: and {len(bad) - most} more tensors of other shapes than the base's")
    return out
