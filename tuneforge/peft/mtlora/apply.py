"""`peft=mtlora`: MTLoRA, low-rank adaptation for multi-task learning (Agiza, Neseem & Reda, CVPR 2024,
arXiv 2403.20320; reference code github.com/scale-lab/MTLoRA, `models/lora.py`, `models/swin_transformer_mtlora.py`).

The paper (Sec. 3) adapts one shared backbone for several tasks with two kinds of low-rank modules:
- TA-LoRA, task-agnostic: in every adapted linear of every block, h = W0 x + s B_s A_s x (s = alpha / r, LoRA's
  Eq. 1 with B zero at init); the backbone's stream is one and the same for all tasks.
- TS-LoRA, task-specific: only at chosen points, the last block of each stage, where the backbone hands per-task
  features to per-task decoders. Its default `matrix` form gives task t the output
      h_t = W0 x + s_t B_t A_t x            (s_t = alpha / r_t; no shared B_s A_s term)
  while the shared output W0 x + s B_s A_s x continues down the backbone.
So one backbone pass serves every task: nothing before a TS-LoRA point depends on the task.

The decoder-LM analogue (`peft.mode=matrix`, the default): a decoder has one stage and one output (the LM head),
so the trunk is the first L - k decoder layers (`peft.task_layers` = k), adapted with TA-LoRA only, and the last k
layers carry one TS-LoRA per task and no shared adapter: a sample of task t computes h = W0 x + s_t B_t A_t x in
every target linear there. A micro-batch mixing tasks makes one trunk pass (its hidden states do not depend on the
task labels: no trunk module reads them) and routes each sample through its task's modules in the last k layers.
Each exported task model is W0 + s B_s A_s in the trunk and W0 + s_t B_t A_t in the last k layers.

`peft.mode=routed` keeps tuneforge's earlier variant: shared + task adapters in every target linear,
h = W0 x + s B_s A_s x + s_t B_t A_t x, each sample routed to its task from the first layer; the whole network is
task-specific, so the same input seen as two tasks costs two full passes.

Where this follows the reference code:
- `MTLoRALinear.__init__`: A Kaiming-uniform(a=sqrt 5), B zero, for the shared and every task pair (layer.py).
- `MTLoRALinear.forward`, shared_mode='matrix': the shared stream is W0 x + s B_s A_s x and task t's output is
  W0 x + s_t B_t A_t x, without the shared term (layer.py, trunk vs. task linears).
- `BasicLayer`: `lora=(i == depth - 1)`, task modules only in a stage's last block, the earlier blocks shared only
  (the trunk here, with the decoder as one stage and k = 1 by default).
- lora_dropout on the adapter input only.
Where it departs, and why:
- Task points: the reference has one per stage (4 in Swin-T) feeding multi-scale decoders; a decoder LM has one
  output, so the task modules sit in the last k layers, and `task_layers` generalises "the last block" to k.
- Inside a task block the reference keeps qkv shared (`tasks=None`: the attention map comes from the shared
  stream) and gives task modules to proj/fc1/fc2 only; its task block reads the shared stream. With k > 1 chained
  task layers here, a task layer after the first reads its task's stream, so every target linear of the last k
  layers (q/k/v included) is task-specific; `target_modules` still chooses which linears are adapted.
- The reference computes every task's output for every input (dense multi-task labels: each image is labelled
  for every task) and keeps the shared stream alive through the task blocks for the next stage. Here a sample has
  one task (its label), so the last k layers compute only that task's stream, and the shared adapters that would
  only feed a stream nobody reads are not created. Every task's output for one prompt is the prompt repeated with
  each task id in one batch; the trunk's result is the same for each copy (tested), so a cache of it could serve
  all tasks, which generation in tuneforge does not need (eval decodes each task's own prompts).
- Task scales are fixed alpha / r_t (the reference's `trainable_scale_per_task`, `addition` and `matrixv2`
  modes and MTLoRA+'s patch-merging modules are not implemented; a decoder has no patch merging).
- Routing is by a 0/1 mask per task over the micro-batch, every task branch running on every sample (ZeRO needs
  every rank's backward to touch the same parameters); other tasks' modules get exactly zero gradient.

HF PEFT has no MTLoRA (its mixed-adapter batches are inference only and have no shared part), so the layer is
written here (`layer.py`); `export/<task>/adapter` is a plain PEFT LoRA per task (ranks per module: r in the
trunk, task_r in the task layers, r + task_r in routed mode; scales folded into B).
"""

from __future__ import annotations

import copy
import json
import re

import torch

from tuneforge.errors import InputError
from tuneforge.models.layers import decoder_layers, unwrap
from tuneforge.models.targets import replace, target_linears
from tuneforge.peft import routing
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.mtlora.layer import MTLoraLinear
from tuneforge.peft.mtlora.spec import MtLoraSpec, tasks_differ
from tuneforge.registry import register


def task_layer_problems(spec, n_layers: int) -> list[str]:
    if spec.mode == "matrix" and spec.task_layers >= n_layers:
        return [f"peft.task_layers={spec.task_layers} leaves no shared trunk in a model of {n_layers} layers: set "
                f"peft.task_layers <= {n_layers - 1} (or peft.mode=routed)"]
    return []


@register("peft", "mtlora", config=MtLoraSpec)
class MtLora(TuningMethod):
    @staticmethod
    def shape_problems(spec, shape):
        return TuningMethod.shape_problems(spec, shape) + task_layer_problems(spec, shape.n_layers)

    def apply(self, model, ctx):
        s = self.spec
        data_tasks = list(ctx.specs["data"].tasks) if "data" in ctx.specs else list(s.tasks)
        problems = tasks_differ(s.tasks, data_tasks) if data_tasks else [
            "peft=mtlora needs multi-task data: set data.task_field=<field> and data.tasks=[task1,task2,...]"]
        layers_name, layers = decoder_layers(model)
        problems += task_layer_problems(s, len(layers))
        if problems:
            raise InputError(problems)
        self.tasks = data_tasks
        for p in model.parameters():
            p.requires_grad_(False)
        route = routing.attach(model, self.tasks)
        first_task_layer = len(layers) - s.task_layers if s.mode == "matrix" else 0
        self.targets, self.task_targets = [], []
        for name, linear in target_linears(model, s.target_modules):
            layer = int(name[len(layers_name) + 1:].split(".", 1)[0])
            if layer < first_task_layer:  # trunk: shared adapter only, never reads the route
                module = MTLoraLinear(linear, None, s.r, s.task_r, s.alpha, s.dropout)
            else:  # matrix: task adapters only; routed: shared + task adapters
                module = MTLoraLinear(linear, route, s.r if s.mode == "routed" else 0, s.task_r, s.alpha, s.dropout)
                self.task_targets.append(name)
            replace(model, name, module)
            self.targets.append(name)
        if not self.task_targets:
            raise InputError([f"peft.target_modules={list(s.target_modules)} selects no linear in the last "
                              f"{s.task_layers} layers: nothing would be task-specific"])
        return model

    def variants(self):
        return list(self.tasks)

    def use_variant(self, model, variant):
        routing.set_tasks(model, self.tasks.index(variant))

    def merged(self, model, variant=None):
        """A plain copy of the model for task `variant`: every adapted linear with its update folded in."""
        if variant is None:
            raise ValueError(f"peft=mtlora merges one task at a time: name one of {self.tasks}")
        t = self.tasks.index(variant)
        out = copy.deepcopy(model)
        for name in self.targets:
            replace(out, name, out.get_submodule(name).merged_linear(t))
        del unwrap(out).task_route
        return out

    def save_adapter(self, model, path, variant=None):
        """A PEFT LoRA adapter for one task. Per module, A and B with B A = the task's update (scales folded into
        B, so every scaling is 1): rank r in the trunk, task_r in the task layers (r + task_r when routed)."""
        if variant is None:
            return False
        from peft import LoraConfig
        from safetensors.torch import save_file

        t = self.tasks.index(variant)
        tensors, ranks = {}, {}
        for name in self.targets:
            with torch.no_grad():
                a, b = model.get_submodule(name).factors(t)
            tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
            ranks[name] = a.shape[0]
        common = max(set(ranks.values()), key=list(ranks.values()).count)
        pattern = {re.escape(n): k for n, k in ranks.items() if k != common}
        config = LoraConfig(r=common, lora_alpha=common, rank_pattern=pattern, alpha_pattern=pattern,
                            target_modules=list(self.targets), task_type="CAUSAL_LM")
        config.save_pretrained(str(path))
        save_file(tensors, str(path / "adapter_model.safetensors"))
        (path / "tuneforge_task.json").write_text(json.dumps({"task": variant, "tasks": self.tasks}))
        return True
