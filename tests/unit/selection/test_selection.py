from __future__ import annotations

from pathlib import Path

from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.selection import SelectionContext


def select(n, seed, *overrides):
    spec = build_specs(compose(list(overrides)))["selection"]
    return registry.build("selection", spec).select(list(range(n)), SelectionContext(seed, None, Path(".")))


def test_none_keeps_all():
    assert select(7, 0, "selection=none") == list(range(7))


def test_random_fraction_and_count_are_seeded_subsets():
    a = select(100, 1, "selection=random", "selection.fraction=0.3")
    assert len(a) == 30 == len(set(a)) and a == sorted(a)
    assert a == select(100, 1, "selection=random", "selection.fraction=0.3")
    assert a != select(100, 2, "selection=random", "selection.fraction=0.3")
    assert len(select(100, 1, "selection=random", "selection.count=12")) == 12


def test_loss_selector_keeps_the_highest_loss_samples(tokenizer, tiny_model_factory):
    """selection=loss scores each sample by its mean token loss under the model: checked against the loss
    Hugging Face computes itself for each sample alone."""
    import torch

    from tuneforge.data.encode import encode
    from tuneforge.data.rows import Example, RowReport

    model = tiny_model_factory(3).eval()
    spec = build_specs(compose(["model=tiny_llama"]))["data"]
    texts = ["1+1=2", "The quick brown fox jumps over the lazy dog.", "a", "Paris is the capital of France.", "zzz qqq"]
    samples = encode([Example(text=t) for t in texts], tokenizer, spec, RowReport())
    with torch.no_grad():
        want = [model(input_ids=torch.tensor([s.input_ids]), labels=torch.tensor([s.labels])).loss.item()
                for s in samples]
    sel = build_specs(compose(["selection=loss", "selection.count=2", "selection.batch_size=2"]))["selection"]
    got = registry.build("selection", sel).select(samples, SelectionContext(0, tokenizer, None, model=model))
    assert got == sorted(sorted(range(len(texts)), key=lambda i: -want[i])[:2])
    low = build_specs(compose(["selection=loss", "selection.count=2", "selection.keep=low"]))["selection"]
    assert registry.build("selection", low).select(samples, SelectionContext(0, tokenizer, None, model=model)) == \
        sorted(sorted(range(len(texts)), key=lambda i: want[i])[:2])


def test_a_selection_is_saved_and_a_resumed_run_reuses_it(tmp_path):
    """The initial choice is written to run_dir/selection/selected.json; resuming reads it back (same samples,
    nothing selected again), and a different selection config selects afresh."""
    import json

    from tests.conftest import train_here

    args = ["recipe=quickstart_tiny", "trainer.eval_at_start=false", "selection=random", "selection.fraction=0.5"]
    run = train_here(*args, "trainer.max_steps=1", out=tmp_path / "run")
    first = json.loads((run / "selection/selected.json").read_text())
    assert first["kept"] == len(first["chosen"]) == first["pool"] // 2
    assert "selection" in json.loads((run / "summary.json").read_text())["phase_s"]  # its cost in seconds
    train_here(*args, "trainer.max_steps=2", "trainer.resume=auto", out=run)
    assert "selection: reused the" in (run / "train.log").read_text()
    assert json.loads((run / "selection/selected.json").read_text()) == first
    train_here(*args[:-1], "selection.fraction=0.25", "trainer.max_steps=1", out=tmp_path / "other")
    assert json.loads((tmp_path / "other/selection/selected.json").read_text())["chosen"] != first["chosen"]


def test_a_selection_that_changes_the_samples_during_training_refuses_packing():
    """Dynamic selection x packing is refused before anything loads, naming the fix; selecting once packs fine."""
    import pytest

    from tuneforge.errors import InputError

    base = ["recipe=quickstart_tiny", "data.packing=true"]
    # (selection=skillit needs data.tasks, which refuses packing on its own: a pack would mix tasks)
    for sel in (["selection=loss", "selection.reselect_every=2"], ["selection=mates"], ["selection=middo"]):
        with pytest.raises(InputError, match="packed sequences cannot follow.*set data.packing=false"):
            compose([*base, *sel])
    compose([*base, "selection=loss"])  # selects once: the chosen samples are packed once
