"""`tuneforge plan`'s table: the terms per rank, the peak, the verdict and the cheapest fix."""

from __future__ import annotations

from tuneforge.plan.planner import Plan, gb

ROWS = (
    ("weights", "weights", "stored dtype, quantized base, ZeRO-3 partition + gathered layer"),
    ("gradients", "gradients", "at the optimizer step (ZeRO-2/3: fp32 partition + reduce bucket)"),
    ("optimizer", "optimizer states", "moments + fp32 master partition (ZeRO >= 1 or half-precision weights)"),
    ("activations", "activations", "saved for backward: micro-batch x sequence x layers (checkpointing: inputs only)"),
    ("logits", "logits + loss", "head and cross-entropy buffers over the trained positions"),
    ("step", "step temporaries", "optimizer step temporary, or ZeRO-0's flat all-reduce copy of the gradients"),
    ("backward_start", "at backward start", "weights + optimizer + activations + loss buffers"),
    ("optimizer_step", "at optimizer step", "weights + optimizer + gradients + temporaries"),
)


def render(con, plan: Plan, recipe: str) -> None:
    from rich.table import Table

    s, t = plan.setting, plan.terms
    title = (f"memory plan per rank: recipe={recipe}, {t['method'] or s.peft.name}, {s.world} rank(s), ZeRO-{s.stage}"
             f"{' + optimizer offload' if s.offload_optimizer else ''}{' + param offload' if s.offload_param else ''}"
             f", micro-batch {s.micro_batch} x {s.seq_len} tokens{', gradient checkpointing' if s.checkpointing else ''}")
    table = Table(title=title, title_justify="left")
    for col in ("term", "bytes", "what"):
        table.add_column(col, justify="right" if col == "bytes" else "left")
    for key, label, what in ROWS:
        table.add_row(label, gb(t[key]), what)
    table.add_row("[bold]peak[/]", f"[bold]{gb(t['peak'])}[/]", "the larger of the two moments above")
    if t["cpu_offloaded"]:
        table.add_row("(host RAM)", gb(t["cpu_offloaded"]), "optimizer states + master copy offloaded to the CPU")
    con.print(table)
    con.print(f"trainable: {t['trainable'] / 1e6:,.2f}M of {t['total_params'] / 1e6:,.1f}M parameters")
    for note in plan.notes:
        con.print(f"[dim]note: {note}[/]")
    con.print(("[green]" if plan.fits else "[red]") + plan.summary() + "[/]")
