"""`peft=mtlora`: MTLoRA, low-rank adaptation for multi-task learning (Agiza et al., CVPR 2024, arXiv 2403.20320).

Sec. 3.2 of the paper: task-agnostic low-rank adapters (TA-LoRA) are shared by all tasks and task-specific ones
(TS-LoRA) are one per task; for task t a TS-LoRA linear computes
    h_t = W0 x + (alpha / r) B_s A_s x + (alpha / r_t) B_t A_t x      (shared + task t; W0 frozen),
with B zero at init (Eq. 1 of LoRA), so training starts from the pretrained model. Each training sample is routed to
its own task: the batch carries task ids (`data.task_field` / `data.tasks`) and every adapted linear adds, per
sample, the shared update and that sample's task update only (per-sample routing inside a micro-batch).
The paper's backbone is a hierarchical vision transformer with TS-LoRA at the end of each stage feeding per-task
decoders; a decoder-only LM has no stages and one head, so tuneforge puts both the shared and the task adapters in
every target linear (`peft.target_modules`), and exports one merged model per task: W0 + shared + task t.

HF PEFT has no MTLoRA (its mixed-adapter batches are inference only and have no shared part), so the layer is
written here (`layer.py`); `export/<task>/adapter` is a plain PEFT LoRA of rank r + r_t (A and B stacked).
"""

from __future__ import annotations

import copy
import json

import torch

from tuneforge.errors import InputError
from tuneforge.models.layers import unwrap
from tuneforge.models.targets import replace, target_linears
from tuneforge.peft import routing
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.mtlora.layer import MTLoraLinear
from tuneforge.peft.mtlora.spec import MtLoraSpec, tasks_differ
from tuneforge.registry import register


@register("peft", "mtlora", config=MtLoraSpec)
class MtLora(TuningMethod):
    def apply(self, model, ctx):
        s = self.spec
        data_tasks = list(ctx.specs["data"].tasks) if "data" in ctx.specs else list(s.tasks)
        problems = tasks_differ(s.tasks, data_tasks) if data_tasks else [
            "peft=mtlora needs multi-task data: set data.task_field=<field> and data.tasks=[task1,task2,...]"]
        if problems:
            raise InputError(problems)
        self.tasks = data_tasks
        for p in model.parameters():
            p.requires_grad_(False)
        route = routing.attach(model, self.tasks)
        self.targets = []
        for name, linear in target_linears(model, s.target_modules):
            replace(model, name, MTLoraLinear(linear, route, s.r, s.task_r, s.alpha, s.dropout))
            self.targets.append(name)
        return model

    def variants(self):
        return list(self.tasks)

    def use_variant(self, model, variant):
        routing.set_tasks(model, self.tasks.index(variant))

    def merged(self, model, variant=None):
        """A plain copy of the model with shared + `variant`'s adapters folded into the weights."""
        if variant is None:
            raise ValueError(f"peft=mtlora merges one task at a time: name one of {self.tasks}")
        t = self.tasks.index(variant)
        out = copy.deepcopy(model)
        for name in self.targets:
            replace(out, name, out.get_submodule(name).merged_linear(t))
        del unwrap(out).task_route
        return out

    def save_adapter(self, model, path, variant=None):
        """A PEFT LoRA adapter for one task: rank r + r_t, A = [A_s; A_t], B = [s B_s, s_t B_t] (scaling 1)."""
        if variant is None:
            return False
        from peft import LoraConfig
        from safetensors.torch import save_file

        s, t = self.spec, self.tasks.index(variant)
        tensors = {}
        for name in self.targets:
            m = model.get_submodule(name)
            with torch.no_grad():
                a = torch.cat([m.shared_A.weight, m.task_A[t].weight])
                b = torch.cat([m.scale * m.shared_B.weight, m.task_scale * m.task_B[t].weight], dim=1)
            tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
        rank = s.r + s.task_r
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=sorted({n.split(".")[-1] for n in self.targets}),
                            task_type="CAUSAL_LM")
        config.save_pretrained(str(path))
        save_file(tensors, str(path / "adapter_model.safetensors"))
        (path / "tuneforge_task.json").write_text(json.dumps({"task": variant, "tasks": self.tasks}))
        return True
