"""selection=middo (Middo, arXiv 2508.21589): the mean +- m sigma rules against thresholds computed here, the loop
on a real tiny model (size kept, nothing changes without outliers), the OpenAI-endpoint refiner against a local
stub server, and the tiny twin's 2-epoch run."""

from __future__ import annotations

import json
import statistics
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch

from tuneforge.data.batching import collate
from tuneforge.errors import InputError
from tuneforge.selection.middo.diagnose import flags, neighbour_similarity


def test_thresholds_pick_exactly_the_planted_outliers():
    rng = np.random.default_rng(0)
    n, m = 40, 1.5
    members = list(range(30))  # the training set; 30..39 the reserve
    prev, cur = rng.normal(2.0, 0.1, n), rng.normal(1.5, 0.1, n)
    prev[[3, 7]] += 2.0
    cur[[3, 9]] += 2.0  # 3: hard before and after; 7 only before, 9 only after: neither is flagged
    quality = rng.normal(0.0, 0.1, n)
    quality[[5, 33]] -= 2.0
    emb = np.repeat(rng.normal(0, 1, (1, 8)), n, 0) + rng.normal(0, 0.05, (n, 8))
    emb[12] = rng.normal(0, 1, 8)  # an isolated sample

    def beyond(x, sign):  # mean +- m sigma of the training set, written out
        ref = [float(x[i]) for i in members]
        t = statistics.fmean(ref) + sign * m * statistics.pstdev(ref)
        return {i for i in range(n) if (x[i] > t if sign > 0 else x[i] < t)}

    e = torch.nn.functional.normalize(torch.tensor(emb), dim=1)
    sims = e @ e[members].T
    knn = np.array([statistics.fmean(sorted(float(sims[i, j]) for j, o in enumerate(members) if o != i)[-2:])
                    for i in range(n)])  # mean cosine similarity to the 2 nearest other training samples
    np.testing.assert_allclose(neighbour_similarity(emb, members, 2), knn, rtol=1e-6)
    got = {k: set(np.flatnonzero(v).tolist()) for k, v in flags(prev, cur, knn, quality, members, m).items()}
    assert got["complexity"] == beyond(prev, +1) & beyond(cur, +1) == {3}
    assert got["quality"] == beyond(quality, -1) == {5, 33}
    assert got["diversity"] == beyond(knn, -1) and 12 in got["diversity"]


def _ctx(tokenizer, tiny_model_factory, **over):
    """A TrainContext over 16 quickstart samples (12 trained, 4 in reserve) and a real tiny Llama."""
    from tuneforge import registry
    from tuneforge.config.compose import build_specs, compose
    from tuneforge.data.encode import encode
    from tuneforge.data.rows import RowReport
    from tuneforge.hooks import TrainContext
    from tuneforge.runner.trainset import TrainSet
    from tuneforge.selection import SelectionContext

    specs = build_specs(compose(["recipe=middo_tiny", "data.n_train=16", "selection.fraction=0.75",
                                 *[f"selection.{k}={v}" for k, v in over.items()]]))
    loaded = registry.build("data", specs["data"]).load(0)
    pool = encode(loaded.train, tokenizer, specs["data"], RowReport())
    data = TrainSet(pool, specs["data"], specs["trainer"], 1)
    model = tiny_model_factory(0)
    sel = registry.build("selection", specs["selection"])
    data.use(sel.select(pool, SelectionContext(0, tokenizer, None, model=model)))
    logs = []
    return sel, TrainContext(step=data.plan.steps_per_epoch, model=model, tokenizer=tokenizer, data=data,
                             log=logs.append), logs


def test_a_loop_keeps_the_size_and_without_outliers_changes_nothing(tokenizer, tiny_model_factory):
    sel, ctx, logs = _ctx(tokenizer, tiny_model_factory, sigma=0.5)
    before = list(ctx.data.chosen)
    sel.on_step_start(ctx)
    assert len(ctx.data.chosen) == len(before) == 12 and ctx.data.chosen != before  # some replaced, size kept
    assert "middo flagged" in logs[0]

    sel, ctx, logs = _ctx(tokenizer, tiny_model_factory, sigma=100.0)  # no sample is beyond 100 sigma
    before, samples = list(ctx.data.chosen), ctx.data.samples
    sel.on_step_start(ctx)
    assert ctx.data.chosen == before and ctx.data.samples is samples and ctx.data.reselected_at is None


def test_the_downweight_refiner_keeps_the_set_and_weights_exactly_the_flagged_samples(tokenizer, tiny_model_factory,
                                                                                    tmp_path):
    """refiner=downweight: the same samples stay; the flagged ones (as recorded by the loop) carry weight 0.25 into
    their batches, every other sample none; the weights are in the checkpointed state."""
    sel, ctx, logs = _ctx(tokenizer, tiny_model_factory, sigma=0.5, refiner="downweight", weight=0.25)
    ctx.run_dir = tmp_path
    before = list(ctx.data.chosen)
    sel.on_step_start(ctx)
    rec = json.loads((tmp_path / "selection" / f"step_{ctx.step}.json").read_text())
    flagged = sorted({i for kind in rec["flagged"].values() for i in kind} & set(before))
    assert flagged and ctx.data.chosen == before and rec["swaps"] == {}
    assert rec["weights"] == {str(i): 0.25 for i in flagged}
    assert [s.weight for s in ctx.data.samples] == [0.25 if i in flagged else None for i in before]
    batch = collate(ctx.data.samples, tokenizer.pad_token_id)
    assert batch["weights"].tolist() == [0.25 if i in flagged else 1.0 for i in before]
    assert ctx.data.state_dict()["weights"] == rec["weights"] and "down-weighted" in logs[0]


def test_the_openai_refiner_rewrites_flagged_samples_through_an_endpoint(tokenizer, tiny_model_factory, tmp_path):
    """A local stub of /v1/chat/completions (the only stub: the endpoint is external by design) answers every
    request with one rewrite; the flagged training samples become that rewrite in place, the size is kept."""
    seen = []

    class Stub(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            seen.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            reply = {"instruction": "What is 2 plus 3?", "response": "5"}
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": json.dumps(reply)}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sel, ctx, logs = _ctx(tokenizer, tiny_model_factory, sigma=0.5, refiner="openai",
                              endpoint=f"http://127.0.0.1:{server.server_port}", api_model="stub-model")
        ctx.run_dir = tmp_path
        before = list(ctx.data.chosen)
        sel.on_step_start(ctx)
    finally:
        server.shutdown()
    rec = json.loads((tmp_path / "selection" / f"step_{ctx.step}.json").read_text())
    assert seen and len(rec["rewritten"]) == len(seen)
    assert all(path == "/v1/chat/completions" and body["model"] == "stub-model" for path, body in seen)
    assert ctx.data.chosen == before  # rewritten in place: the same indices, the same size
    for i in rec["rewritten"]:
        text = tokenizer.decode(ctx.data.pool[i].input_ids, skip_special_tokens=True)
        assert "What is 2 plus 3?" in text and text.strip().endswith("5")
    rows = [json.loads(ln) for ln in (tmp_path / "selection/middo_rewrites.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == rec["rewritten"]


def test_bad_combinations_are_refused_before_loading():
    from tuneforge.config.compose import compose

    with pytest.raises(InputError, match="refiner=openai needs selection.endpoint"):
        compose(["recipe=middo_tiny", "selection.refiner=openai"])
    with pytest.raises(InputError, match="set data.packing=false"):
        compose(["recipe=middo_tiny", "data.packing=true"])


def test_middo_tiny_runs_the_loop_over_two_epochs(tmp_path):
    """The tiny twin: 12 samples, 3 steps per epoch, 6 steps: one loop at the epoch boundary (pinned losses)."""
    from tests.conftest import train_here, train_losses
    from tests.golden import runs as golden

    run = train_here(*golden.ARGS["middo_tiny"], out=tmp_path / "run")
    golden.check("middo_tiny", train_losses(run))
    first, loop = (json.loads((run / f"selection/step_{s}.json").read_text()) for s in (0, 3))
    assert len(first["chosen"]) == len(loop["chosen"]) == 12 and len(loop["loss"]) == 20
    assert "selection: step 3: middo flagged" in (run / "train.log").read_text()
