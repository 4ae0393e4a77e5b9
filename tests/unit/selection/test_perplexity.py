"""selection=perplexity keeps the k samples of lowest exp(mean NLL) under the model, checked against the loss
Hugging Face computes itself for each sample alone."""

from __future__ import annotations

import dataclasses
import json
import math

import torch

from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.data.encode import encode
from tuneforge.data.rows import Example, RowReport
from tuneforge.selection import SelectionContext


def test_perplexity_keeps_the_lowest_perplexity_samples(tokenizer, tiny_model_factory, tmp_path):
    model = tiny_model_factory(5).eval()
    specs = build_specs(compose(["model=tiny_llama", "selection=perplexity", "selection.count=3",
                                 "selection.batch_size=2"]))
    texts = ["1+1=2", "The quick brown fox jumps over the lazy dog.", "a b", "Paris is the capital of France.",
             "zzz qqq", "<html> click </html>", "3 plus 4 is 7"]
    samples = encode([Example(text=t) for t in texts], tokenizer, specs["data"], RowReport())
    with torch.no_grad():
        ppl = [math.exp(model(input_ids=torch.tensor([s.input_ids]), labels=torch.tensor([s.labels])).loss.item())
               for s in samples]
    selector = registry.build("selection", specs["selection"])
    got = selector.select(samples, SelectionContext(0, tokenizer, tmp_path, model=model))
    assert got == sorted(sorted(range(len(texts)), key=lambda i: ppl[i])[:3])
    saved = json.loads((tmp_path / "selection/step_0.json").read_text())
    assert saved["chosen"] == got and torch.allclose(torch.tensor(saved["scores"]), torch.tensor(ppl), rtol=1e-4)
    high = dataclasses.replace(specs["selection"], keep="high")
    assert registry.build("selection", high).select(samples, SelectionContext(0, tokenizer, None, model=model)) == \
        sorted(sorted(range(len(texts)), key=lambda i: -ppl[i])[:3])
