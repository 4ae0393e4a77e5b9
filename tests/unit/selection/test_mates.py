"""selection=mates against its defining properties, on a real DeepSpeed engine (one in-process rank, gloo) of the
tiny Llama: a probe is a real optimizer step whose effect on the reference loss is the oracle, and it leaves every
tensor and counter of the model, optimizer and schedule bitwise as it found them (ZeRO-0 and ZeRO-2); at
temperature -> 0 Gumbel-top-k is plain top-k; the ridge model's predictions rank held-out probes like the oracle
on planted data. (test_mates_run.py: a tiny run re-selects, records each choice and resumes exactly.)"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.data.encode import encode
from tuneforge.data.rows import Example, RowReport
from tuneforge.distributed import dist
from tuneforge.distributed.ds_config import ds_config
from tuneforge.errors import InputError
from tuneforge.runner.engine import Engine
from tuneforge.runner.objective import CausalLM

ON_TASK = ["Tom has 12 apples and buys 7 more. How many apples? 19", "3 plus 4 equals 7 and 7 plus 5 equals 12",
           "Anna reads 20 pages a day for 3 days: 60 pages", "There are 15 cards in one box and 9 in another: 24"]
OFF_TASK = ["zebra violin quartz nebula", "<html><body>click here</body></html>", "qwv xkj pzm ttr lll",
            "Lorem ipsum dolor sit amet consectetur", "$$$ ### @@@ !!! ~~~", "function f(x) { return x * 2; }"]


def samples(tokenizer, texts, spec=None):
    spec = spec or build_specs(compose(["model=tiny_llama"]))["data"]
    return encode([Example(text=t) for t in texts], tokenizer, spec, RowReport())


@pytest.fixture(scope="module")
def engines(tokenizer, tiny_model_factory):
    """A real DeepSpeed engine around the tiny Llama (every weight of its blocks trained, AdamW, cosine schedule)
    per ZeRO stage. The (tied) 49k-token embedding stays frozen: its Adam step would be most of the test's time.
    One CPU thread, as the golden runs pin (on a shared machine, several threads are many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    dist.init("cpu")
    made = {}

    def make(zero: str) -> Engine:
        if zero not in made:
            specs = build_specs(compose(["model=tiny_llama", "peft=full", f"zero={zero}", "precision=fp32",
                                         "optim.lr=1e-2", "sched=cosine", "trainer.micro_batch_size=1"]))
            model = tiny_model_factory(0)
            model.get_input_embeddings().weight.requires_grad_(False)
            engine = Engine(CausalLM(model), ds_config(specs, 1), specs, registry.build("precision", specs["precision"]),
                            "cpu", total_steps=20)
            engine.build([{"params": [p for p in model.parameters() if p.requires_grad]}])
            made[zero] = engine
        return made[zero]

    yield make
    for engine in made.values():
        engine.release()
    dist.shutdown()
    torch.set_num_threads(threads)


def everything(engine) -> dict:
    """Every tensor and counter of the model, the DeepSpeed optimizer (its own state_dict: moments, step counts,
    fp32 partitions, loss scale), the schedule and the engine, copied, by path."""
    out = {}

    def walk(prefix, obj):
        if torch.is_tensor(obj):
            out[prefix] = obj.detach().clone()
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}/{i}", v)
        elif isinstance(obj, (int, float, str, bool, type(None))):
            out[prefix] = obj

    ds = engine.ds
    walk("model", dict(engine.module.named_parameters()))
    walk("optimizer", ds.optimizer.state_dict())
    walk("schedule", ds.lr_scheduler.state_dict())
    walk("engine", {k: getattr(ds, k) for k in ("global_steps", "global_samples", "micro_steps", "skipped_steps")})
    walk("rng", torch.get_rng_state())
    return out


def assert_same(before: dict, after: dict):
    assert before.keys() == after.keys(), set(before) ^ set(after)
    for k, v in before.items():
        same = torch.equal(v, after[k]) if torch.is_tensor(v) else (v == after[k] or v != v and after[k] != after[k])
        assert same, k


def hf_reference_loss(model, refs) -> float:
    """Token-weighted mean loss over the reference samples, from Hugging Face's own loss, one sample at a time."""
    total = count = 0.0
    with torch.no_grad():
        for s in refs:
            n = sum(t != -100 for t in s.labels[1:])
            total += model(input_ids=torch.tensor([s.input_ids]), labels=torch.tensor([s.labels])).loss.item() * n
            count += n
    return total / count


def real_step(engine, sample, pad_id):
    from tuneforge.data.batching import collate

    engine.backward(engine.forward(collate([sample], pad_id)))  # the runner's path, one micro-batch per step
    engine.micro_step()


@pytest.mark.parametrize("zero", ["zero0", "zero2"])
def test_a_probe_is_a_real_step_and_leaves_no_trace(engines, tokenizer, zero):
    from tuneforge.selection.mates.influence import probe

    engine = engines(zero)
    spec = build_specs(compose(["model=tiny_llama"]))["data"]
    pool = samples(tokenizer, ON_TASK[:2] + OFF_TASK[:3], spec)
    refs = samples(tokenizer, ON_TASK[2:], spec)
    pad = tokenizer.pad_token_id
    lm = engine.module.lm
    fresh = everything(engine)  # no optimizer state yet: what a probe creates must go again
    probe(engine, pool[:1], refs, 2, pad)
    assert_same(fresh, everything(engine))
    real_step(engine, pool[4], pad)  # now moments, step counts and a moved schedule exist
    before = everything(engine)
    ref0 = hf_reference_loss(lm, refs)
    oracle = probe(engine, [pool[1], pool[2], pool[0]], refs, 2, pad)
    assert_same(before, everything(engine))
    real_step(engine, pool[0], pad)  # the third probe, after two restores, predicted this step's effect
    assert oracle[2] == pytest.approx(ref0 - hf_reference_loss(lm, refs), abs=1e-5)
    assert oracle[2] > 0 and len(set(oracle)) == 3


def test_gumbel_top_k_is_top_k_at_zero_temperature_and_samples_otherwise():
    from tuneforge.selection.mates.influence import gumbel_top_k

    scores = torch.randn(50, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    top = sorted(sorted(range(50), key=lambda i: -scores[i].item())[:10])
    for seed in range(5):
        assert gumbel_top_k(scores, 10, 1e-8, torch.Generator().manual_seed(seed)) == top
    warm = [gumbel_top_k(scores, 10, 0.5, torch.Generator().manual_seed(seed)) for seed in range(5)]
    assert warm[0] == gumbel_top_k(scores, 10, 0.5, torch.Generator().manual_seed(0))  # seeded
    assert any(w != top for w in warm) and all(len(set(w)) == 10 for w in warm)


def spearman(a, b) -> float:
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def test_the_influence_model_ranks_held_out_samples_like_the_oracle(engines, tokenizer, tmp_path):
    """Planted data: the reference set is 2 on-task texts; half the candidates are near-copies of them, half
    off-task text. MATES (through its own re-selection, temperature 1e-8) probes half the candidates; on the other half,
    its predictions correlate with the oracle probed there (Spearman by ranks, > 0.5), and the chosen samples are
    the top k of its recorded predictions."""
    from tuneforge.hooks import TrainContext
    from tuneforge.runner.trainset import TrainSet
    from tuneforge.selection.mates import Mates, split
    from tuneforge.selection.mates.influence import probe

    specs = build_specs(compose(["model=tiny_llama", "selection=mates", "selection.reference=2", "selection.probes=8", "selection.reselect_every=4",
                                 "selection.temperature=1e-8", "selection.fraction=0.5", "trainer.micro_batch_size=1"]))
    spec, n = specs["selection"], 20
    reference, candidates = split(n, spec, seed=specs["trainer"].seed)
    texts = [""] * n
    for j, i in enumerate(reference):
        texts[i] = ON_TASK[j]
    for j, i in enumerate(candidates):
        texts[i] = (ON_TASK[j % 4 // 2] if j % 2 == 0 else OFF_TASK[j % len(OFF_TASK)]) + f" ({j})"  # no two alike
    pool = samples(tokenizer, texts, specs["data"])
    engine = engines("zero0")
    data = TrainSet(pool, specs["data"], specs["trainer"], 1)
    ctx = TrainContext(step=4, engine=engine, model=engine.module.lm, tokenizer=tokenizer, run_dir=tmp_path, data=data)
    Mates(spec).on_step_start(ctx)
    rec = json.loads((tmp_path / "selection/step_4.json").read_text())
    assert rec["reference"] == reference and len(rec["probed"]) == 8 and set(rec["probed"]) <= set(candidates)
    held = [i for i in candidates if i not in rec["probed"]]
    oracle = probe(engine, [pool[i] for i in held], [pool[i] for i in reference], 8, tokenizer.pad_token_id)
    assert spearman([rec["scores"][i] for i in held], oracle) > 0.5
    top = sorted(sorted(candidates, key=lambda i: -rec["scores"][i])[:len(candidates) // 2])
    assert rec["chosen"] == top == data.chosen and data.reselected_at == 4


def test_zero3_and_uncopyable_optimizer_states_are_refused_before_load():
    with pytest.raises(InputError) as e:
        compose(["recipe=mates_tiny", "zero=zero3"])
    assert "not supported under ZeRO-3" in e.value.render() and "zero=zero2" in e.value.render()
    with pytest.raises(InputError, match="states cannot be copied"):
        compose(["recipe=mates_tiny", "optim=ao_adamw8bit"])
    with pytest.raises(InputError, match="probes=1 must be >= 2"):
        compose(["recipe=mates_tiny", "selection.probes=1"])
