"""Work on a finished run: rebuild its model, re-evaluate it, export it, prune it (or prune a base model).

The model is rebuilt exactly as the run built it (load -> quantize -> apply method) from <run_dir>/config.yaml,
then the trained weights (<run_dir>/final/trainable.safetensors) are copied in by name. Export runs the run's
export stages (tuneforge/export/) on it; a stage that trains (retune) gets `retrain` as `ctx.train`: the
runner's own loop (DeepSpeed, one rank in this process) around the stage's model.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from tuneforge import registry
from tuneforge.config.checks import run_device
from tuneforge.config.compose import prune_spec_of, run_export_stages
from tuneforge.config.run import Run
from tuneforge.data.encode import encode
from tuneforge.errors import InputError, RunError
from tuneforge.export.base import ExportContext, run_stages
from tuneforge.models.load import load_model, load_tokenizer
from tuneforge.prune import report, stage
from tuneforge.runner import evaluate
from tuneforge.runner.model import rebuild
from tuneforge.runner.objective import CausalLM
from tuneforge.runner.runner import Runner
from tuneforge.runner.weights import FILE


def evaluator(specs: dict, tok):
    """model -> eval row on the specs' eval data: loss, and exact match when the data has a checker."""
    t, data = specs["trainer"], specs["data"]
    loaded = registry.build("data", data).load(t.seed)
    examples = loaded.eval[: t.eval_max_samples or None]
    samples = encode(examples, tok, data, loaded.report)
    autocast = registry.build("precision", specs["precision"]).autocast("cpu")

    def run(model) -> dict:
        row = evaluate.eval_loss(CausalLM(model), samples, t.eval_batch_size, tok.pad_token_id, "cpu", autocast,
                                 data.tasks)
        if data.checker != "none":
            row.update(evaluate.exact_match(model, tok, examples, data, t.eval_batch_size, t.max_new_tokens, "cpu",
                                            autocast, synced=False)[0])
        return row

    return run


def eval_run(run_dir: Path) -> dict:
    specs, tok, model, _ = rebuild(Run.load(run_dir))
    row = evaluator(specs, tok)(model)
    (Path(run_dir) / "eval.json").write_text(json.dumps(row, indent=2))
    return row


def export_run(run_dir: Path, overrides: list[str] = (), log=None) -> Path:
    """Run the export stages (the run's `export=[...]`, changed by `overrides` such as export=[merge,prune] or
    export.prune.sparsity=0.3) and write <run_dir>/export: by default (export=[merge]) the merged Hugging Face
    model + tokenizer, and <run_dir>/export/adapter for adapters. A method with variants (e.g. one model per task)
    runs the stages once per variant into <run_dir>/export/<variant>/; methods that cannot merge write their own
    format there (`method.export`, e.g. LST's export/lst/)."""
    run = Run.load(run_dir)
    stages = run_export_stages(run.cfg, list(overrides))
    specs, tok, model, method = rebuild(run)
    out, train = Path(run_dir) / "export", functools.partial(retrain, run)
    for variant in method.variants() or [None]:
        dest = out if variant is None else out / variant
        run_stages(model, stages, ExportContext(method, specs, tok, dest, variant, log, train))
    return out


class Retrain(Runner):
    """The runner's phases around a model built elsewhere (an export stage's), `method` deciding what trains.
    No checkpoint and no final weights: the stage owns the result. The engine is released at the end, so the
    model goes back to the stage as an ordinary module."""

    def __init__(self, run: Run, model, method):
        super().__init__(run)
        self.given = (model, method)

    def make_model(self):
        return self.given

    def save(self) -> None:
        pass

    def eval_harness(self) -> None:  # the stage's model is evaluated by the stage, not by lm-eval
        pass

    def teardown(self) -> None:
        if getattr(self, "engine", None) is not None and self.engine.ds is not None:
            self.engine.release()
        super().teardown()


def retrain(run: Run, model, method, changes: dict, out: Path) -> dict:
    """Train `model` (its trainable set and hooks: `method`) in this process with the run's config changed by
    `changes`, as one rank with the run's global batch (grad_accum x ranks), ZeRO-3 as ZeRO-2 (one rank has
    nothing to partition, and the model must come back whole), evaluating before and after. Writes the log,
    metrics and summary.json in `out`; returns the summary."""
    cfg = copy.deepcopy(run.cfg)
    t, zero = run.specs["trainer"], run.specs["zero"]
    fixed = {"trainer.nproc": 1, "launcher.nnodes": 1, "trainer.grad_accum": t.grad_accum * run.world_size,
             "trainer.resume": "none", "trainer.save_every": 0, "trainer.eval_at_start": True}
    if zero.stage == 3:
        fixed.update({"zero.stage": 2, "zero.offload_param": "none"})
    for key, value in {**changes, **fixed}.items():
        OmegaConf.update(cfg, key, value)
    sub = Run.of(cfg)
    out.mkdir(parents=True, exist_ok=True)
    sub.set_run_dir(out.absolute())
    with torch.enable_grad():
        code = Retrain(sub, model, method).run()
    summary = json.loads((out / "summary.json").read_text())
    if code != 0:
        raise RunError(f"re-tuning failed ({summary.get('status')}: {summary.get('error')}); log in {out}")
    return summary


def prune_run(run_dir: Path, overrides: list[str] = (), out: Path | None = None, log=None) -> Path:
    """`tuneforge prune run_dir=DIR prune=<method> [prune.<knob>=...]`: the finished run's merged model pruned
    with calibration windows from the run's own training data, written to DIR/pruned (or `out`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "final" / FILE).is_file():
        raise InputError([f"run_dir={run_dir} holds no finished run (no final/{FILE}): finish it first "
                          "(trainer.resume=auto continues it), or prune a model with `tuneforge prune model=... "
                          "prune=... out=DIR`"])
    run = Run.load(run_dir)
    spec = prune_spec_of(run.cfg, list(overrides))
    specs, tok, model, method = rebuild(run)
    if not method.hf_export or method.variants():
        raise InputError([f"peft={specs['peft'].name} does not merge into one Hugging Face model, so there is no "
                          "single model to prune: export it (`tuneforge export`) and prune an exported model "
                          "with `tuneforge prune model.path=DIR/export/... prune=... out=DIR`"])
    with torch.no_grad():
        merged = method.merged(model)
    return prune_and_save(merged, spec, specs, tok, out or run_dir / "pruned", log)


def prune_model(overrides: list[str], out: Path, log=None) -> Path:
    """`tuneforge prune [recipe=...] model=... prune=<method> out=DIR`: a base model pruned with calibration
    windows from the recipe's training data, written to `out`."""
    run = Run.compose(list(overrides))
    specs = run.specs
    if specs["prune"].name == "none":
        raise InputError(["no pruning method: choose one, e.g. prune=wanda"])
    tok = load_tokenizer(specs["model"])
    model = load_model(specs["model"], seed=specs["trainer"].seed, vocab_size=len(tok))
    return prune_and_save(model, specs["prune"], specs, tok, Path(out), log)


def prune_and_save(model, spec, specs: dict, tok, out: Path, log=None) -> Path:
    """Prune `model` with windows of the run's tokenized training data; save it (zeros kept), the tokenizer, the
    per-layer report (sparsity.json) and a README stating the sparsity in `out`."""
    t, data = specs["trainer"], specs["data"]
    loaded = registry.build("data", data).load(t.seed)
    samples = [s.input_ids for s in encode(loaded.train, tok, data, loaded.report)]
    device = "cuda" if run_device(specs) == "cuda" else None
    threads = torch.get_num_threads()
    torch.set_num_threads(t.threads or threads)  # trainer.threads, as the run's own ranks
    try:
        rep = stage.run(registry.build("prune", spec), model, samples, t.seed, log, device)
    finally:
        torch.set_num_threads(threads)
    if log is not None:
        log(report.table(rep))
    total = sum(p.numel() for p in model.parameters())
    rep["model_sparsity"] = sum(int((p == 0).sum()) for p in model.parameters()) / total
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    report.write(rep, out / "sparsity.json")
    (out / "README.md").write_text(report.card(rep, specs["model"]))
    return out


def _run_of(path: Path) -> Path | None:
    """The run directory `path` is, or sits in (run/export, run/export/adapter), if any."""
    for p in (path, path.parent, path.parent.parent):
        if (p / "config.yaml").is_file():
            return p
    return None


def _base_id(specs: dict) -> str:
    """What a run was tuned from: its model path (and revision), or its preset's random init and seed."""
    m = specs["model"]
    if m.init == "random":
        return f"model={m.name}, random init with seed {specs['trainer'].seed}"
    return m.path + (f"@{m.revision}" if m.revision else "")


def _merge_inputs(paths: list[Path], log) -> tuple[list[tuple[Path, str | None]], list[dict], dict | None]:
    """([(model or adapter dir, base it was tuned from or None)], report rows, the first run's specs or None).
    Run directories are checked for one base first, then exported where they have no export yet."""
    bad = [f"merge input {p}: neither a tuneforge run directory (config.yaml), a Hugging Face model (config.json) "
           "nor a PEFT adapter (adapter_config.json)" for p in paths
           if not any((p / f).is_file() for f in ("config.yaml", "config.json", "adapter_config.json"))]
    if len(paths) < 2:
        bad.append(f"merge needs two or more inputs, got {len(paths)}: tuneforge merge DIR DIR ... out=DIR")
    if bad:
        raise InputError(bad)
    owners = [_run_of(p) for p in paths]
    specs = {o: Run.load(o).specs for o in owners if o is not None}
    ids = {o: _base_id(s) for o, s in specs.items()}
    if len(set(ids.values())) > 1:
        first = next(iter(ids))
        raise InputError([f"merge input {o} does not share the base: tuned from {i!r}, but {first} from "
                          f"{ids[first]!r}" for o, i in ids.items() if i != ids[first]])
    inputs, described = [], []
    for p, owner in zip(paths, owners):
        if p == owner:
            if not (p / "export" / "config.json").is_file():
                log(f"merge: exporting {p} first (tuneforge export)")
                export_run(p, log=log)
            p = p / "export"
            if not (p / "config.json").is_file():
                raise InputError([f"{owner}: its export is not one Hugging Face model (peft="
                                  f"{specs[owner]['peft'].name} exports per variant or its own format): pass an "
                                  "export/<variant> directory"])
        inputs.append((p, ids.get(owner)))
        described.append({"path": str(p), "run": str(owner) if owner else None, "base": ids.get(owner)})
    return inputs, described, next(iter(specs.values()), None)


def _merge_base(spec, inputs, first_run: dict | None):
    """(base model in fp32, its id or None, tokenizer or None): merge.base, else the first run's base model, else
    a LoRA adapter's base_model_name_or_path when it is a local directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.models.load import load_model, prepare_tokenizer

    if spec.base is None and first_run is not None:
        tok = load_tokenizer(first_run["model"])
        return load_model(first_run["model"], seed=first_run["trainer"].seed, vocab_size=len(tok)), \
            _base_id(first_run), tok
    path = spec.base
    if path is None:
        adapter = next((p for p, _ in inputs if (p / "adapter_config.json").is_file()), None)
        path = adapter and json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not path or not Path(path).is_dir():
            raise InputError(["cannot tell which base the inputs were tuned from: set merge.base=<Hugging Face dir>"])
    base = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    has_tok = [d for d in (Path(path), *(p for p, _ in inputs)) if (d / "tokenizer_config.json").is_file()]
    return base, None, prepare_tokenizer(AutoTokenizer.from_pretrained(str(has_tok[0]))) if has_tok else None


def merge_run(run: Run, paths: list[str], out: Path, log=print) -> dict:
    """`tuneforge merge`: merge run directories (their export, made here if missing), exported Hugging Face models
    or LoRA adapters with `run`'s merge method into `out`; a search evaluates on `run`'s eval data."""
    from tuneforge.merge.merge import merge_models

    spec = run.specs["merge"]
    if spec.name == "none":
        raise InputError(["choose a merge method: merge=task_arithmetic|ties|dare|pcb|lines"])
    inputs, described, first_run = _merge_inputs([Path(p) for p in (paths or spec.inputs)], log)
    base, base_id, tok = _merge_base(spec, inputs, first_run)
    if spec.search and tok is None:
        raise InputError(["merge.search=true needs a tokenizer: none beside merge.base or the inputs"])
    evaluate_fn = evaluator(run.specs, tok) if spec.search else None
    return merge_models(base.eval(), base_id, inputs, spec, Path(out), tok, evaluate_fn, log, described)
