"""Runner(run).run(): the phases of one run, top to bottom, each short and logged.

    setup         device, threads, process group, seeds, console and metrics
    select_data   load + validate rows, tokenize, select (rank 0, broadcast), pack, plan batches
    build_model   load -> quantize -> apply the tuning method -> precision; frozen base linears stored in the
                  autocast dtype where the numbers stay the same (precision/modes.py)
    build_engine  the Engine (DeepSpeed engine around the method's parameter groups); resume if asked; a
                  selector that scores samples with the model selects now
    train         the loop: hooks, micro-batches, optimizer step, log, eval, checkpoint; a step's loss is
                  its token losses summed over the whole global batch / its trained tokens (any split)
    save          final checkpoint, trained weights, probe logits, summary.json
    eval_harness  lm-eval on the saved final model when harness.tasks is set (rank 0; tuneforge/runner/harness.py)
    teardown      close sinks, destroy the process group

Tuning methods, data selectors and precision modes act during training only through their hooks
(`tuneforge.hooks`), called the same way with a TrainContext.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import signal
import time
import traceback
import zlib
from pathlib import Path

import torch
from rich.markup import escape

from tuneforge import hardware, registry, selection
from tuneforge.config.run import Run
from tuneforge.data.batching import collate
from tuneforge.data.cache import encode_cached
from tuneforge.data.encode import encode
from tuneforge.data.formats import check_report
from tuneforge.distributed import dist
from tuneforge.distributed.ds_config import run_ds_config
from tuneforge.errors import EXIT_FAILED, EXIT_OK, Diverged, InputError, Preempted, Pruned, RunError
from tuneforge.hooks import TrainContext
from tuneforge.logging import secrets
from tuneforge.logging.console import Console, fmt_duration
from tuneforge.logging.metrics import Metrics
from tuneforge.models.load import load_tokenizer
from tuneforge.peft.base import MethodContext, count, trainable
from tuneforge.plan.measure import StepPeak
from tuneforge.precision.modes import resolve
from tuneforge.runner import checkpoint, evaluate, faults, harness
from tuneforge.runner.engine import Engine
from tuneforge.runner.model import build as build_lm
from tuneforge.runner.objective import CausalLM, step_divisor
from tuneforge.runner.trainset import TrainSet
from tuneforge.runner.trial import hooks_for as trial_hooks
from tuneforge.runner.weights import FILE as WEIGHTS
from tuneforge.runner.weights import save_named
from tuneforge.selection import SelectionContext


def pick_device(want: str) -> str:
    if want == "cuda" and not torch.cuda.is_available():
        raise InputError(["trainer.device=cuda but no CUDA device is visible: use trainer.device=cpu"])
    return "cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available()) else "cpu"


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Runner:
    frozen: str | None = None  # the dtype make_model rounded a frozen base to (precision/modes.py), if any
    frozen_note = ""  # ", frozen linears in bf16" for the model line

    def __init__(self, run: Run):
        self.run_spec, self.cfg, self.specs = run, run.cfg, run.specs
        self.run_dir = run.run_dir
        self.t = self.specs["trainer"]
        self.step = 0
        self.history: dict[str, list] = {"loss": [], "eval": []}
        self.t_start = time.time()
        self.phase_s: dict[str, float] = {}
        self.skipped = self.bad_streak = 0
        self.saved_step = -1
        self.stop_signal: str | None = None
        self.state_bytes: int | None = None  # optimizer-state bytes, kept when the engine is released before the summary
        self.measured_peak: int | None = None  # plan.measure: the largest step peak

    # ---------------------------------------------------------------- phases
    def run(self) -> int:
        status, code, error = "failed", EXIT_FAILED, None
        try:
            for phase in (self.setup, self.select_data, self.build_model, self.build_engine, self.train, self.save,
                          self.eval_harness):
                t0 = time.time()
                phase()
                self.phase_s[phase.__name__] = round(time.time() - t0, 2)
            status, code = "completed", EXIT_OK
        except (Preempted, Pruned) as e:
            status, code, error = ("preempted" if isinstance(e, Preempted) else "pruned"), e.exit_code, str(e)
            self._console().print(f"[yellow]{escape(error)}[/]", force=True)
        except (InputError, RunError) as e:
            status, code, error = ("bad_input" if isinstance(e, InputError) else "failed"), e.exit_code, str(e)
            if isinstance(e, RunError):
                self._console().log_only(traceback.format_exc())
            status = "diverged" if isinstance(e, Diverged) else status
            self._console().error(error)
        except BaseException as e:  # noqa: BLE001 - recorded, printed with its traceback, re-mapped to exit 1
            error = f"{type(e).__name__}: {e}"
            if dist.peer_failure(e) and (lost := dist.lost_peers(self.run_spec.ranks_per_node)):
                error = f"{lost}\n{error}"  # a dead node or rank, named
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            self._console().print(traceback.format_exc(), force=True, markup=False)
            self._console().error(error)
        finally:
            self.write_summary(status, error)
            self.teardown()
        return code

    def setup(self) -> None:
        self.device = pick_device(self.t.device)
        torch.set_num_threads(self.t.threads or max(1, (os.cpu_count() or 1) // self.run_spec.ranks_per_node))
        dist.init(self.device, self.t.dist_timeout_s)
        if dist.world() != self.run_spec.world_size:
            raise InputError([f"{dist.world()} ranks joined, but the run is for {self.run_spec.world_size} "
                              f"(launcher.nnodes={self.run_spec.nodes} x trainer.nproc={self.run_spec.ranks_per_node})"
                              ": start it with `tuneforge train` or set WORLD_SIZE to match"])
        self._previous_handlers = {s: signal.signal(s, self._on_stop_signal) for s in (signal.SIGTERM, signal.SIGUSR1)}
        if self.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.manual_seed(self.t.seed)
        logger = self.specs["logger"]
        self.console = Console(self.run_dir, main=dist.is_main(), progress=logger.progress)
        self.metrics = Metrics(self.run_dir, enabled=dist.is_main(), logger=logger, config=self.cfg,
                               recipe=self.cfg.recipe, warn=self.console.print)
        resolve(self.specs["precision"], self.device)  # precision=auto, when no run directory was prepared for it
        self.precision = registry.build("precision", self.specs["precision"])
        self.autocast = lambda: self.precision.autocast(self.device)
        p = self.specs["precision"]
        self.console.print(f"[bold]tuneforge[/] recipe={self.cfg.recipe} ranks={dist.world()} device={self.device} "
                           f"precision={p.chosen or p.name} allocator={hardware.allocator()} run_dir={self.run_dir}")

    def select_data(self) -> None:
        spec = self.specs["data"]
        self.tok = load_tokenizer(self.specs["model"])
        loaded = registry.build("data", spec).load(self.t.seed)
        report = loaded.report
        self.eval_examples = loaded.eval[: self.t.eval_max_samples or None]
        pool = self.tokenize(loaded.train, report, "train")
        self.eval_samples = self.tokenize(self.eval_examples, report, "eval")
        if report.bad:
            self.console.print(f"[yellow]data:[/] {report.bad} rows skipped: " + "; ".join(report.lines()))
        self.data = TrainSet(pool, spec, self.t, dist.world())
        self.selector = registry.build("selection", self.specs["selection"])
        if self.selector.needs_model:  # it selects once the engine is built
            self.plan_steps()
        else:
            self.select()

    def tokenize(self, examples, report, what: str) -> list:
        """Encode with the tokenization cache; a stream (data.streaming) is read only as far as the run trains."""
        spec, t0 = self.specs["data"], time.time()
        if spec.streaming and what == "train":
            need = self.t.max_steps * self.t.micro_batch_size * self.t.grad_accum * dist.world()
            with self.console.bar(f"tokenize {what}", None if spec.packing else need) as advance:
                samples = encode(examples, self.tok, spec, report, advance, until=need)
            check_report(spec, report, len(samples))
            self.console.print(f"data: streamed {len(samples)} {what} samples in {time.time() - t0:.1f}s")
            return samples
        with self.console.bar(f"tokenize {what}", len(examples)) as advance:
            done = encode_cached(examples, self.tok, spec, report, advance)
        if done.reused:
            self.console.print(f"data: reused the tokenized {what} samples cached in {done.path}")
        elif examples:
            self.console.print(f"data: tokenized {len(examples)} {what} rows in {time.time() - t0:.1f}s"
                               + (f" (cached in {done.path})" if done.path else ""))
        return done.samples

    def select(self, model=None) -> None:
        """The selector's choice: on rank 0 (it may write caches), or on every rank when it runs the model
        (ZeRO-3 forwards are collective); rank 0's choice is broadcast either way. A choice made with the model
        is kept in checkpoints (a resumed model would score differently)."""
        spec = self.specs["selection"]
        key = selection.fingerprint(self.data.pool, [spec, self.specs["model"]], self.t.seed)
        chosen = dist.broadcast_object(selection.saved_choice(self.run_dir, key) if dist.is_main() else None)
        if chosen is not None:
            self.console.print(f"selection: reused the {len(chosen)} samples chosen before "
                               f"({self.run_dir / 'selection/selected.json'})")
        else:
            ctx = SelectionContext(seed=self.t.seed, tokenizer=self.tok, run_dir=self.run_dir, model=model)
            t0 = time.time()
            chosen = self.selector.select(self.data.pool, ctx) if model is not None or dist.is_main() else None
            chosen = dist.broadcast_object(chosen)
            self.selection_time(t0)
            if spec.name != "none":
                selection.save_choice(self.run_dir, key, chosen, len(self.data.pool))
        self.data.use(chosen, step=self.step if model is not None else None)
        self.plan_steps()

    def selection_time(self, since: float) -> None:
        """Seconds spent selecting data (the initial choice and every re-selection): summary.json's phase_s."""
        self.phase_s["selection"] = round(self.phase_s.get("selection", 0.0) + time.time() - since, 2)

    def plan_steps(self) -> None:
        spec, plan = self.specs["data"], self.data.plan
        if plan.steps_per_epoch == 0:
            raise InputError([f"{len(self.data.samples)} training samples are fewer than one global batch "
                              f"({plan.global_batch} = micro_batch_size x grad_accum x ranks): lower "
                              "trainer.micro_batch_size / grad_accum or add data"], title="bad dataset")
        self.total_steps = plan.total_steps(self.t.max_steps, self.t.epochs)
        self.console.print(f"data: {len(self.data.chosen)} train samples ({len(self.data.samples)} sequences"
                           f"{', packed' if spec.packing else ''}), {len(self.eval_samples)} eval; "
                           f"{self.total_steps} steps x {plan.global_batch} samples")

    def build_model(self) -> None:
        ms = self.specs["model"]
        self.ds = run_ds_config(self.run_spec)
        self.zero3 = self.ds["zero_optimization"]["stage"] == 3
        if self.zero3 and ms.init == "pretrained":  # load straight into ZeRO-3 partitions (zero.Init)
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds = HfDeepSpeedConfig(self.ds)
        model, self.method = self.make_model()
        self.objective = CausalLM(model, self.t.loss_chunk, self.t.unpad)
        n_train, n_all = count(model)
        self.counts = {"trainable_params": n_train, "total_params": n_all}
        self.console.print(f"model: {type(model).__name__} {n_all / 1e6:.1f}M params, {n_train / 1e6:.2f}M trainable "
                           f"({100 * n_train / max(n_all, 1):.2f}%) peft={self.specs['peft'].name}{self.frozen_note}")

    def make_model(self):
        """(model, tuning method): load -> quantize -> apply the method -> precision."""
        ctx = MethodContext(seed=self.t.seed, tokenizer=self.tok, train_samples=self.data.samples,
                            run_dir=self.run_dir, specs=self.specs, log=self.console.print)
        self.frozen = self.specs["precision"].frozen_dtype(self.specs["peft"].caps, self.specs["zero"].stage)
        store = self.frozen is not None and not self.selector.needs_model  # a selector scores outside autocast
        self.frozen_note = f", frozen linears {'in' if store else 'rounded to'} {self.frozen}" if self.frozen else ""
        return build_lm(self.specs, self.tok, ctx, zero3=self.zero3, store_frozen=store)

    def build_engine(self) -> None:
        ckpt = checkpoint.resolve(self.t.resume, self.run_dir, self.console)
        meta = self.restore_state(ckpt) if ckpt is not None else {}
        self.engine = Engine(self.objective, self.ds, self.specs, self.precision, self.device,
                             meta.get("total_steps", self.total_steps))
        self.engine.build(self.method.param_groups(self.objective.lm), start_step=self.step)
        if ckpt is not None:
            universal = checkpoint.needs_universal(ckpt, dist.world(), self.ds["zero_optimization"]["stage"])
            self.history = checkpoint.load(self.engine.ds, ckpt, self.objective.lm, universal).get("history", self.history)
            self.console.print(f"resumed from {ckpt} at step {self.step}")
            self.metrics.truncate(self.step)
        elif self.t.resume == "auto":
            self.console.print("resume=auto: no checkpoint in the run directory, starting fresh")
        if self.selector.needs_model and not meta.get("data"):
            self.select(self.objective.lm)
        if self.engine.total_steps != self.total_steps:
            if ckpt is not None:
                self.console.print(f"schedule: the run now has {self.total_steps} steps (it had "
                                   f"{self.engine.total_steps}): the learning-rate schedule is rebuilt for "
                                   f"{self.total_steps} steps, continuing at step {self.step}")
            self.engine.reset_schedule(self.total_steps)
        self.hooks = [self.method, self.selector, self.precision, *trial_hooks(self.run_dir)]
        for hook in self.hooks:
            hook.on_train_start(self.context())

    def restore_state(self, ckpt: Path) -> dict:
        """What decides the engine's structure and the data, restored before the engine is built: the step
        counters, the method's state (e.g. LISA's active layers), a selector's choice, the planned length."""
        meta = checkpoint.read_meta(ckpt)
        self.step, self.skipped, self.bad_streak = meta["step"], meta.get("skipped_steps", 0), meta.get("bad_streak", 0)
        self.method.load_state_dict(meta.get("method", {}))
        self.data.load_state_dict(meta.get("data", {}))
        if meta.get("planned_for") == [self.t.max_steps, self.t.epochs]:
            self.total_steps = meta["total_steps"]
        elif meta.get("data"):  # the user changed the run's length: plan it over the data it trains on now
            self.plan_steps()
        return meta

    def context(self) -> TrainContext:
        return TrainContext(step=self.step, total_steps=self.total_steps, engine=self.engine, model=self.objective.lm,
                            tokenizer=self.tok, log=self.console.print, metrics=self.metrics.log, run_dir=self.run_dir,
                            data=self.data)

    def train(self) -> None:
        t = self.t
        if self.step == 0 and t.eval_at_start:
            self.evaluate()
        self.console.start(self.total_steps, self.step)
        while self.step < self.total_steps:
            if dist.all_sum([self.stop_signal is not None])[0]:  # every rank stops at the same step
                self.preempt()
            row = self.measured_step()
            if self.step % t.log_every == 0 or self.step == self.total_steps or row.get("skipped"):
                self.metrics.log(row)
                self.console.step(self.step, row)
            if t.eval_every and self.step % t.eval_every == 0 and self.step < self.total_steps:
                row, ctx = self.evaluate(), self.context()
                for hook in self.hooks:
                    hook.on_eval(ctx, row)
            if t.save_every and self.step % t.save_every == 0 and self.step < self.total_steps:
                self.checkpoint()
        self.console.stop()
        self.evaluate()

    def measured_step(self) -> dict:
        """train_step, with its peak memory on this rank when plan.measure (plan/measure.py defines it)."""
        if not self.specs["plan"].measure:
            return self.train_step()
        with StepPeak(self.device) as peak:
            row = self.train_step()
        self.measured_peak = max(self.measured_peak or 0, peak.bytes)
        return {**row, "peak_bytes": peak.bytes}

    def train_step(self) -> dict:
        """One optimizer step over this rank's micro-batches, normalised by the global batch's trained tokens (so
        the gradient and the logged loss are one big batch's); a step with a non-finite loss or gradient norm is
        skipped by the engine (parameters unchanged) and counted."""
        t0 = time.time()  # the step's time includes the hooks' own work (e.g. a LISA switch)
        faults.at_step(self.step)
        ctx = self.context()
        for hook in self.hooks:
            t1 = time.time()
            hook.on_step_start(ctx)
            if hook is self.selector:  # a re-selection's cost counts as selection time
                self.selection_time(t1)
        lr, plan, samples = self.engine.lr, self.data.plan, self.data.samples
        loss_sum, tokens = 0.0, 0
        divisor = step_divisor(plan.trained_tokens(self.step, samples), plan.accum * plan.world)
        for micro, idx in enumerate(plan.micro_batches(self.step, dist.rank())):
            batch = {k: v.to(self.device) for k, v in collate([samples[i] for i in idx], self.tok.pad_token_id).items()}
            with self.autocast():
                loss = self.engine.forward(batch, divisor=divisor)
            if faults.active("nan", "loss", self.step):
                loss = loss * float("nan")
            self.engine.backward(loss)
            self.engine.micro_step()
            faults.at_micro(self.step, micro)
            loss_sum += loss.item()
            del loss  # the loss's backward hooks reference the engine: never keep it across steps
            tokens += int((batch["segments"] > 0).sum() if "segments" in batch else batch["attention_mask"].sum())
        applied = self.engine.step_applied()
        loss_sum, tokens = dist.all_sum([loss_sum, tokens])
        crc = zlib.crc32(str(plan.global_batch_indices(self.step)).encode())
        self.step += 1
        row = {"step": self.step, "loss": loss_sum / (self.t.grad_accum * dist.world()), "lr": lr,
               "tokens_per_s": tokens / max(time.time() - t0, 1e-9),
               "epoch": (self.step - 1) // plan.steps_per_epoch, "samples": crc}
        if applied:
            self.bad_streak = 0
            self.history["loss"].append(row["loss"])
            return row
        self.skipped, self.bad_streak = self.skipped + 1, self.bad_streak + 1
        self.engine.advance_schedule()
        self.console.print(f"[yellow]warning:[/] step {self.step}: non-finite loss or gradients, step skipped "
                           f"({self.bad_streak} in a row, {self.skipped} in total)")
        if self.bad_streak >= self.t.max_bad_steps:
            raise Diverged(f"{self.bad_streak} consecutive steps with a non-finite loss or gradient norm "
                           f"(trainer.max_bad_steps={self.t.max_bad_steps}), up to step {self.step}: lower optim.lr, "
                           "check the data, or resume from an earlier checkpoint with trainer.resume=<dir>")
        return {**row, "skipped": True}

    def preempt(self) -> None:
        self.console.stop()
        if self.saved_step != self.step:
            self.checkpoint()
        raise Preempted(f"stopped by {self.stop_signal or 'a signal on another rank'} at step {self.step}: "
                        f"checkpoint committed; resume with trainer.resume=auto trainer.output_dir={self.run_dir}")

    def save(self) -> None:
        self.checkpoint()
        final = self.run_dir / "final"
        meta = {"step": self.step, "peft": self.specs["peft"].name, **self.counts}
        save_named(self.objective.lm, final / WEIGHTS, self.method.trained_names(self.objective.lm), meta)
        self.save_probe(final)
        dist.barrier()

    def eval_harness(self) -> None:
        """lm-eval (harness.tasks) on rank 0, after the final checkpoint, on the saved final model: the same model
        and numbers as `tuneforge eval run_dir=DIR harness.tasks=[...]`. The training engine is released first
        (its memory is the evaluation's); the other ranks do not wait."""
        spec = self.specs["harness"]
        if not spec.tasks:
            return
        self.state_bytes = self.optimizer_state_bytes()
        self.engine.release()
        self.engine = self.objective = self._hf_ds = None  # no ZeRO-3 loading context for the rebuilt model
        if self.device == "cuda":
            torch.cuda.empty_cache()
        if dist.is_main():
            harness.check(spec)  # as preflight did (a run started by its config.yaml alone had none)
            self.harness = harness.evaluate_run(self.run_spec, spec, self.console.print)

    def _on_stop_signal(self, signum, frame) -> None:
        """SIGTERM / SIGUSR1 (e.g. Slurm's pre-emption warning): finish the current step, commit a checkpoint,
        exit with code 3. Further signals while saving only re-set the flag, so they cannot corrupt the save."""
        self.stop_signal = signal.Signals(signum).name

    def teardown(self) -> None:
        for sig, handler in getattr(self, "_previous_handlers", {}).items():
            signal.signal(sig, handler)
        for sink in ("metrics", "console"):
            if hasattr(self, sink):
                getattr(self, sink).close()
        gc.unfreeze()  # the engine froze what existed when it was built (runner/engine.py)
        dist.shutdown()

    # ---------------------------------------------------------------- helpers
    def evaluate(self) -> dict:
        if not self.eval_samples:
            return {}
        self.engine.module.eval()
        t0, row = time.time(), {"step": self.step}
        row.update(evaluate.eval_loss(self.objective, self.eval_samples, self.t.eval_batch_size,
                                      self.tok.pad_token_id, self.device, self.autocast(), self.specs["data"].tasks))
        shown = []
        if self.specs["data"].checker != "none":
            em, shown = evaluate.exact_match(self.objective.lm, self.tok, self.eval_examples, self.specs["data"],
                                             self.t.eval_batch_size, self.t.max_new_tokens, self.device, self.autocast(),
                                             synced=self.zero3 and dist.world() > 1)
            row.update(em)
        self.engine.module.train()
        self.metrics.log(row)
        self.history["eval"].append(row)
        em = f" exact_match {row['exact_match']:.1%} (n={row['eval_n']})" if "exact_match" in row else ""
        self.console.print(f"eval @ step {self.step}: loss {row['eval_loss']:.4f} ppl {row['eval_ppl']:.2f}{em} "
                           f"({time.time() - t0:.1f}s)")
        per_task = [(k.split("/", 1)[1], v) for k, v in row.items() if k.startswith("eval_loss/")]
        if per_task:
            self.console.print("  per task: " + "; ".join(
                f"{name} loss {v:.4f}" + (f" em {row[f'exact_match/{name}']:.1%}" if f"exact_match/{name}" in row else "")
                for name, v in per_task))
        for q, a, ok in shown:
            self.console.print(f"  {'[green]✓[/]' if ok else '[red]✗[/]'} {q[:70]!r} -> {a[:40]!r}")
        return row

    def checkpoint(self) -> None:
        plan = self.data.plan
        meta = {"method": self.method.state_dict(), "data": self.data.state_dict(), "total_steps": self.total_steps,
                "planned_for": [self.t.max_steps, self.t.epochs], "consumed_samples": self.step * plan.global_batch,
                "epoch": self.step // plan.steps_per_epoch}
        lm = self.objective.lm
        frozen = self.method.trained_names(lm) - {n for n, _ in trainable(lm)} | self.method.resume_buffers(lm)
        meta.update(skipped_steps=self.skipped, bad_streak=self.bad_streak)
        path = checkpoint.save(self.engine.ds, self.run_dir, self.step, {"history": self.history}, meta,
                               self.t.keep_last, lm, frozen)
        self.saved_step = self.step
        self.console.print(f"checkpoint: {path}")

    def save_probe(self, final: Path) -> None:
        """Logits of the trained model on a fixed input, for export round-trip checks."""
        from safetensors.torch import save_file

        ids = torch.tensor([(self.eval_samples or self.data.samples)[0].input_ids[:32]], device=self.device)
        self.engine.module.eval()
        if self.frozen is not None:  # frozen linears stored in the autocast dtype: this runs outside autocast
            self.precision.restore_frozen(self.objective.lm, self.frozen)
        probe = {"input_ids": ids.cpu()}
        for variant in self.method.variants() or [None]:  # e.g. one model per task: logits.<task>
            if variant is not None:
                self.method.use_variant(self.objective.lm, variant)
            with torch.no_grad():
                probe["logits" if variant is None else f"logits.{variant}"] = self.objective.lm(input_ids=ids).logits.float().cpu()
        if dist.is_main():
            save_file(probe, str(final / "probe.safetensors"))

    def _console(self) -> Console:
        if not hasattr(self, "console"):
            self.console = Console(self.run_dir if self.run_dir.is_dir() else None, main=dist.is_main())
        return self.console

    def optimizer_state_bytes(self) -> int | None:
        """Rank 0's optimizer-state bytes (None before the engine exists)."""
        engine = getattr(self, "engine", None)
        try:
            return engine.held_bytes() if engine is not None and engine.ds is not None else None
        except NotImplementedError:  # an engine kind optim_state does not know
            return None

    def write_summary(self, status: str, error: str | None) -> None:
        if not dist.is_main():
            return
        evals = self.history["eval"]
        first, last = (evals[0], evals[-1]) if evals else ({}, {})
        wall = time.time() - self.t_start
        summary = {
            "status": status, "recipe": self.cfg.recipe, "steps": self.step,
            "total_steps": getattr(self, "total_steps", None),
            "final_train_loss": self.history["loss"][-1] if self.history["loss"] else None,
            "eval_before": first if len(evals) > 1 else {}, "eval": last,
            "skipped_steps": self.skipped, "wall_time_s": round(wall, 2), "peak_memory_mb": round(peak_memory_mb(getattr(self, "device", "cpu")), 1),
            "optimizer_state_bytes": self.state_bytes or self.optimizer_state_bytes(),
            "measured_peak_bytes": self.measured_peak, "allocator": hardware.allocator(),
            **getattr(self, "counts", {}), "world_size": dist.world(), "phase_s": self.phase_s,
            "run_dir": str(self.run_dir), "error": error,
            **({"harness": self.harness} if getattr(self, "harness", None) else {}),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(secrets.redact_json(summary), indent=2))
        if status == "completed":
            rows = [("status", status), ("steps", str(self.step)),
                    ("train loss", f"{self.history['loss'][0]:.4f} -> {self.history['loss'][-1]:.4f}")]
            def change(key, fmt):
                return fmt.format(last[key]) if len(evals) < 2 else f"{fmt.format(first[key])} -> {fmt.format(last[key])}"

            if "eval_loss" in last:
                rows.append(("eval loss", change("eval_loss", "{:.4f}")))
            if "exact_match" in last:
                rows.append(("exact match", f"{change('exact_match', '{:.1%}')} (n={last['eval_n']})"))
            rows += [("wall time", fmt_duration(wall)), ("peak memory", f"{summary['peak_memory_mb']:,.0f} MB (rank 0)"),
                     ("run dir", str(self.run_dir))]
            self._console().summary("run complete", rows)
