"""Middo's refiners: what happens to the flagged samples of the training set (its size never changes).

    drop    each flagged sample leaves the training set and an unflagged pool sample that is not in it takes its
            place (seeded order); with too few such samples, the remaining flagged ones stay
    openai  an OpenAI-compatible /v1/chat/completions endpoint rewrites each flagged sample (the instruction for
            the reason it was flagged), which replaces it in place; one that fails to rewrite is dropped as above
"""

from __future__ import annotations

import json
import os
import random
import urllib.request

REWRITE = {
    "complexity": "The model keeps failing on this example: rewrite it so that it is easier to learn from "
                  "(clearer steps, simpler wording), keeping its meaning and its correct answer.",
    "diversity": "This example is far from the rest of the training set: write a new example on the same topic "
                 "that connects it to common instructions, with a correct answer.",
    "quality": "This example is of low quality: rewrite it into a clear, complete and correct instruction and "
               "response.",
}
FORMAT = ('Answer with one JSON object only: {"instruction": "...", "response": "..."}.\n\n'
          "#Instruction#:\n{instruction}\n\n#Response#:\n{response}")


def backfill(chosen: list[int], flagged: set[int], eligible: list[int], seed: int) -> tuple[list[int], dict]:
    """Replace each flagged member of `chosen` (in index order) by an eligible pool sample (seeded order): the
    new choice, and {replaced index: replacement}."""
    pool = sorted(set(eligible) - set(chosen))
    random.Random(seed).shuffle(pool)
    out, swaps = set(chosen), {}
    for i, j in zip(sorted(flagged & out), pool):
        out.discard(i)
        out.add(j)
        swaps[i] = j
    return sorted(out), swaps


def chat(endpoint: str, model: str, prompt: str, key_env: str, timeout: float) -> str:
    """One chat completion (stdlib HTTP); the reply's text."""
    body = json.dumps({"model": model, "temperature": 0,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    headers = {"Content-Type": "application/json"}
    if os.environ.get(key_env):
        headers["Authorization"] = f"Bearer {os.environ[key_env]}"
    req = urllib.request.Request(endpoint.rstrip("/") + "/v1/chat/completions", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())["choices"][0]["message"]["content"]


def rewrite(spec, reason: str, instruction: str, response: str) -> tuple[str, str] | None:
    """(instruction, response) rewritten by the endpoint, or None when the call or its answer fails."""
    prompt = REWRITE[reason] + "\n" + FORMAT.replace("{instruction}", instruction).replace("{response}", response)
    try:
        text = chat(spec.endpoint, spec.api_model, prompt, spec.api_key_env, spec.timeout_s)
        obj = json.loads(text[text.index("{"):text.rindex("}") + 1])
        return str(obj["instruction"]), str(obj["response"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
