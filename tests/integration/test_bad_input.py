"""Bad input through the CLI: one clear error naming the fix, exit code 2, before any model loads."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tuneforge

IN_A_PROCESS = "misspelled key"  # this case runs the real CLI process (its exit code); the rest call main() here

CASES = {
    "misspelled key": (["trainer.max_stepz=3"], "did you mean 'max_steps'"),
    "wrong type": (["trainer.micro_batch_size=four"], "trainer.micro_batch_size='four'"),
    "unknown option": (["peft=lorra"], "did you mean 'lora'"),
    "capability conflict": (["peft=switchlora", "optim=adamw8bit"], "8-bit block-wise states cannot do: use optim=adamw"),
    "missing model path": (["model.path=/no/such/model"], "model.path=/no/such/model: no such file or directory"),
    "malformed dataset": (["data=alpaca", "data.path={bad}", "data.bad_rows=error"], "bad.jsonl:2"),
    "no valid rows": (["data=alpaca", "data.path={bad}", "data.limit=2", "data.eval_split=0"], None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_before_model_load(tmp_path, case, capsys, monkeypatch):
    overrides, expect = CASES[case]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n{broken\n" + json.dumps({"output": "z"}) + "\n")
    if case == "no valid rows":
        bad.write_text("{broken\n" + json.dumps({"output": "z"}) + "\n")
        expect = "no valid training rows"
    args = ["recipe=quickstart_tiny", *[o.format(bad=bad) for o in overrides]]
    if case == IN_A_PROCESS:
        proc = tuneforge("train", *args, cwd=tmp_path)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        from tuneforge.cli import main

        monkeypatch.chdir(tmp_path)
        code = main(["train", *args])
        out, err = capsys.readouterr()
    assert code == 2, out + err
    assert expect in err, err
    assert "model:" not in out  # the model was never built
    assert not (tmp_path / "outputs").exists()
