"""Schemas of the preset groups (model, zero, trainer, logger) and of the whole run.

Groups whose options are different builders (data, selection, peft, quant, precision, optim, sched, launcher)
take their schema from the registry: `@register(group, name, config=Spec)`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Optional

from tuneforge.config.spec import Spec, knob, one_of, positive


@dataclass
class ModelSpec(Spec):
    name: str = knob("smollm2_135m", "preset name (configs/model/<name>.yaml)")
    path: Optional[str] = knob(
        None,
        "weights: a local Hugging Face directory, a hub id (org/name), a .gguf file, or pkg://<package>/<file>",
    )
    tokenizer: Optional[str] = knob(None, "tokenizer source (same forms as path); default: path")
    init: str = knob("pretrained", "pretrained: load weights from path; random: build from `arch` with random init")
    arch: dict[str, Any] = knob({}, "config fields: the whole architecture for init=random, or overrides")
    card: dict[str, Any] = knob({}, "architecture facts (a config.json subset) used only for checks and memory "
                                   "estimates when the model's own config is not available offline")
    revision: Optional[str] = knob(None, "hub revision (branch, tag or commit) for hub ids")
    token: Optional[str] = knob(None, "Hugging Face token for gated/private models (better: the HF_TOKEN environment "
                                      "variable); never written to disk or logs")
    trust_remote_code: bool = knob(False, "allow model code from the hub repo to run (off: safer)")
    gradient_checkpointing: bool = knob(False, "recompute activations in backward to save memory")
    attn_implementation: str = knob("sdpa", "attention kernel: sdpa, eager, flash_attention_2")

    def problems(self):
        out = one_of(self, "init", ("pretrained", "random"))
        if self.init == "pretrained" and not self.path:
            out.append("model.path is required for init=pretrained: set model.path=/path/to/hf_dir (or a hub id)")
        if self.init == "random" and not (self.tokenizer or self.path):
            out.append("init=random needs model.tokenizer (where the tokenizer comes from)")
        return out + one_of(self, "attn_implementation", ("sdpa", "eager", "flash_attention_2"))


@dataclass
class ZeroSpec(Spec):
    name: str = knob("zero0", "preset name (configs/zero/<name>.yaml)")
    stage: int = knob(0, "ZeRO stage: 0 (plain data parallel), 1 (optimizer states), 2 (+gradients), 3 (+params)")
    offload_optimizer: str = knob("none", "where optimizer states live: none, cpu, nvme (ZeRO-Offload/Infinity)")
    offload_param: str = knob("none", "where parameters live between uses (stage 3 only): none, cpu, nvme")
    nvme_path: Optional[str] = knob(None, "directory on a fast local disk for nvme offload")
    overlap_comm: bool = knob(False, "overlap gradient reduction with backward (more memory, faster on GPUs)")
    contiguous_gradients: bool = knob(True, "copy gradients into one buffer as they are produced")
    reduce_bucket_size: int = knob(500_000_000, "elements per gradient-reduction bucket")
    stage3_prefetch_bucket_size: int = knob(50_000_000, "stage 3: elements prefetched ahead of use")
    stage3_param_persistence_threshold: int = knob(100_000, "stage 3: params smaller than this stay unpartitioned")

    def problems(self):
        out = [] if self.stage in (0, 1, 2, 3) else [f"stage={self.stage} must be 0, 1, 2 or 3"]
        out += one_of(self, "offload_optimizer", ("none", "cpu", "nvme"))
        out += one_of(self, "offload_param", ("none", "cpu", "nvme"))
        if self.offload_param != "none" and self.stage != 3:
            out.append("offload_param needs stage=3 (use zero=zero3_offload)")
        if self.offload_optimizer != "none" and self.stage == 0:
            out.append("offload_optimizer needs stage >= 1 (use zero=zero2_offload)")
        if "nvme" in (self.offload_optimizer, self.offload_param) and not self.nvme_path:
            out.append("nvme offload needs zero.nvme_path=/fast/local/disk")
        return out + positive(self, "reduce_bucket_size", "stage3_prefetch_bucket_size")


@dataclass
class TrainerSpec(Spec):
    name: str = knob("default", "preset name (configs/trainer/<name>.yaml)")
    max_steps: int = knob(-1, "optimizer steps to run; -1: run `epochs` epochs instead")
    epochs: float = knob(1.0, "passes over the training set when max_steps=-1")
    micro_batch_size: int = knob(4, "samples per rank per forward/backward")
    grad_accum: int = knob(1, "micro-batches accumulated per optimizer step")
    eval_every: int = knob(0, "evaluate every N steps (0: only at the end)")
    eval_at_start: bool = knob(True, "evaluate before the first step too (shows the before/after gain)")
    eval_max_samples: int = knob(200, "cap on eval examples for loss and generation metrics (0: all)")
    eval_batch_size: int = knob(16, "prompts per generation batch during eval")
    max_new_tokens: int = knob(16, "generation budget per eval prompt (answer-checked datasets)")
    save_every: int = knob(0, "checkpoint every N steps (0: only at the end)")
    keep_last: int = knob(2, "checkpoints kept (older ones are deleted after a newer one is saved)")
    log_every: int = knob(1, "log train metrics every N steps")
    seed: int = knob(42, "seed for init, data order, dropout (identical on every rank)")
    output_dir: Optional[str] = knob(None, "run directory; default outputs/<recipe>/<timestamp>")
    nproc: int = knob(1, "ranks (processes) on this machine")
    resume: str = knob("none", "none, auto (latest checkpoint in output_dir), or a checkpoint directory")
    max_bad_steps: int = knob(5, "stop (exit code 4) after this many consecutive steps with a non-finite loss or "
                                 "gradient norm; each such step is skipped, parameters unchanged")
    dist_timeout_s: int = knob(600, "seconds a collective may wait for another rank before the run fails")
    device: str = knob("auto", "auto (cuda if available), cpu or cuda")
    threads: int = knob(0, "CPU threads per rank (0: cores / nproc)")
    loss_chunk: int = knob(512, "tokens per chunk of the LM head + loss, each chunk's gradient made in forward "
                                "so no [tokens, vocab] logits are kept (0: in one piece; docs/performance.md)")
    unpad: bool = knob(True, "run each micro-batch's samples end to end in one row, attention within each sample, "
                             "so padding is never computed (plain causal decoders on sdpa attention; same loss; "
                             "docs/performance.md)")

    def problems(self):
        out = positive(self, "micro_batch_size", "grad_accum", "nproc", "log_every", "eval_batch_size", "keep_last",
                       "max_bad_steps", "dist_timeout_s")
        out += positive(self, "eval_every", "save_every", "eval_max_samples", "max_new_tokens", "threads", "loss_chunk",
                        allow_zero=True)
        if self.max_steps == 0 or self.max_steps < -1:
            out.append(f"max_steps={self.max_steps} must be > 0, or -1 to train for `epochs`")
        if self.max_steps == -1 and self.epochs <= 0:
            out.append(f"epochs={self.epochs} must be > 0 when max_steps=-1")
        return out + one_of(self, "device", ("auto", "cpu", "cuda"))


@dataclass
class LoggerSpec(Spec):
    name: str = knob("console", "preset name (configs/logger/<name>.yaml)")
    progress: bool = knob(True, "live progress bar on a terminal (plain lines otherwise)")
    tensorboard: bool = knob(False, "also write TensorBoard event files to <run_dir>/tensorboard")
    tracker: str = knob("none", "experiment tracker fed beside metrics.jsonl: none, wandb or mlflow (docs/tracking.md)")
    project: Optional[str] = knob(None, "W&B project / MLflow experiment; default: the recipe's name")
    run_name: Optional[str] = knob(None, "the tracker run's name; default: <recipe>/<run directory's name>")
    tags: list[str] = knob([], "tags on the tracker run")
    mode: str = knob("offline", "W&B: offline (files in <run_dir>/wandb, `wandb sync` them later; needs no "
                                "network) or online")
    entity: Optional[str] = knob(None, "W&B entity (team or user); default: yours")
    tracking_uri: Optional[str] = knob(None, "MLflow tracking URI (a shared file store, a server http://...); "
                                             "default: the file store <run_dir>/mlruns")
    plots: bool = knob(True, "draw <run_dir>/plots/loss.png (losses and eval metrics against steps) at the end")

    def problems(self):
        out = one_of(self, "tracker", ("none", "wandb", "mlflow")) + one_of(self, "mode", ("offline", "online"))
        if self.tracker != "none" and importlib.util.find_spec(self.tracker) is None:
            out.append(f"logger.tracker={self.tracker} needs the {self.tracker} package: "
                       "pip install 'tuneforge[track]' (or logger=console)")
        return out


@dataclass
class PlanSpec(Spec):
    name: str = knob("default", "preset name (configs/plan/<name>.yaml)")
    gpu_mem: str = knob("auto", "memory of one device the plan is checked against, e.g. 80GB, 24GiB, 40000MB; auto: "
                                "this machine's GPU, or its RAM shared by trainer.nproc ranks on a CPU")
    gpus: int = knob(0, "devices (ranks) the plan is for; 0: the run's world size (launcher.nnodes x trainer.nproc)")
    strict: bool = knob(False, "`tuneforge train` refuses to start (exit 2) when the plan does not fit")
    measure: bool = knob(False, "also measure each training step's peak memory per rank (CUDA: max allocated; CPU: "
                                "peak of live tensor bytes, by the profiler: slow) into summary.json")

    def problems(self):
        out = positive(self, "gpus", allow_zero=True)
        if self.gpu_mem != "auto" and parse_bytes(self.gpu_mem) is None:
            out.append(f"gpu_mem={self.gpu_mem!r} is not a size: write e.g. 80GB, 24GiB, 512MB or auto")
        return out


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text) -> int | None:
    """'80GB' -> 80e9, '24GiB' -> 24 * 2**30, '512' -> 512 (bytes); None when it is not a size."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass
class HarnessSpec(Spec):
    """EleutherAI lm-eval on the trained model (tuneforge/runner/harness.py, docs/evaluation.md): at the end of
    `tuneforge train` when `tasks` is set, or afterwards with `tuneforge eval run_dir=DIR harness.tasks=[...]`."""

    name: str = knob("default", "preset name (configs/harness/<name>.yaml)")
    tasks: list[str] = knob([], "lm-eval task, group or tag names; tuneforge_gsm8k_local ships with tuneforge and "
                                "needs no download. Empty: no lm-eval run")
    include_path: list[str] = knob([], "directories of your own lm-eval task YAMLs (their `task:` names join tasks)")
    limit: Optional[float] = knob(None, "examples per task: a count (>= 1) or a fraction (< 1); null: all")
    num_fewshot: Optional[int] = knob(None, "few-shot examples per prompt; null: each task's own default")
    batch_size: int = knob(8, "requests per forward pass")
    max_gen_toks: Optional[int] = knob(None, "cap on generated tokens in generate tasks; null: each task's own")
    model: str = knob("merged", "merged: adapters merged into the base, as `tuneforge export` writes it; adapter: "
                                "the model as trained, adapter layers in place")
    apply_chat_template: bool = knob(False, "wrap prompts in the tokenizer's chat template (chat-tuned models)")
    log_samples: bool = knob(False, "also write each example's prompt, output and score to "
                                    "<run_dir>/harness/samples_<task>.jsonl")
    bootstrap_iters: int = knob(0, "bootstrap resamples for the metrics' standard errors (0: none, fast)")

    def problems(self):
        out = positive(self, "batch_size") + positive(self, "bootstrap_iters", allow_zero=True)
        out += one_of(self, "model", ("merged", "adapter"))
        if self.limit is not None and self.limit <= 0:
            out.append(f"limit={self.limit} must be > 0: a count of examples, or a fraction below 1")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            out.append(f"num_fewshot={self.num_fewshot} must be >= 0")
        if self.max_gen_toks is not None and self.max_gen_toks <= 0:
            out.append(f"max_gen_toks={self.max_gen_toks} must be > 0")
        twice = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        return out + ([f"tasks lists {', '.join(twice)} twice"] if twice else [])


PRESET_SCHEMAS: dict[str, type] = {"model": ModelSpec, "zero": ZeroSpec, "trainer": TrainerSpec, "logger": LoggerSpec,
                                   "harness": HarnessSpec, "plan": PlanSpec}
# Every config group, in the order a run uses them.
GROUPS = ("model", "data", "selection", "peft", "quant", "prune", "precision", "zero", "optim", "sched", "trainer",
          "launcher", "logger", "merge", "harness", "plan")
# A group whose choice is a list of options: the stages `tuneforge export` runs, in order (export=[merge,prune]);
# each stage's knobs sit under export.<stage> (configs/export/<stage>.yaml, `@register("export", <stage>, ...)`).
EXPORT = "export"


@dataclass
class RootSpec(Spec):
    """Top-level keys beside the groups."""

    recipe: str = knob("quickstart", "the recipe this run was composed from")
    description: str = knob("", "one line: what the recipe does")
    deepspeed: Optional[str] = knob(None, "path to a raw DeepSpeed JSON whose keys override the generated config")


ROOT_KEYS = tuple(f for f in RootSpec.__dataclass_fields__)


def _store_schemas() -> None:
    """Preset-group schemas live in Hydra's ConfigStore beside the registered ones (schema/<group>/<name>)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, schema in PRESET_SCHEMAS.items():
        cs.store(group=f"schema/{group}", name=group, node=schema)
    cs.store(group="schema", name="root", node=RootSpec)


_store_schemas()
