"""Examples -> token ids with labels: chat template from the tokenizer, loss only on assistant tokens.

Assistant spans are found by rendering the conversation prefix by prefix (the template's own output), then
mapping characters to tokens with the fast tokenizer's offsets: every token that starts inside an assistant
turn (its content and the end-of-turn marker) is trained; system/user text and role headers are not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Optional

from tuneforge.data.rows import Example, RowReport
from tuneforge.data.spec import DataSpec
from tuneforge.errors import InputError

IGNORE = -100
# Used only when a tokenizer ships no chat template (a warning says so).


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    source: str = ""
    position_ids: Optional[list[int]] = None  # set for packed sequences
    segments: Optional[list[int]] = None  # packed: 1, 2, ... per sample, 0 for padding
    task: Optional[int] = None  # multi-task data: index of the example's task in data.tasks
    weight: Optional[float] = None  # a selector's loss weight for this sample (None: 1)

    @property
    def trained_tokens(self) -> int:
        """Tokens the objective trains on: a label is predicted from the token before it, so the first never is."""
        return sum(1 for t in self.labels[1:] if t != IGNORE)


def with_system(messages: list[dict], system_prompt: Optional[str]) -> list[dict]:
    if system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def render(tok, messages: list[dict], generation_prompt: bool = False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def encode_chat(tok, messages: list[dict]) -> tuple[list[int], list[int]]:
    text = render(tok, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            start = len(render(tok, messages[:i], generation_prompt=True))
            end = len(render(tok, messages[: i + 1]))
            if not text.startswith(render(tok, messages[: i + 1])):
                raise ValueError("the chat template does not render conversations prefix by prefix")
            spans.append((start, end))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [tid if any(s <= off[0] < e for s, e in spans) else IGNORE
              for tid, off in zip(enc["input_ids"], enc["offset_mapping"])]
    return list(enc["input_ids"]), labels


def encode_text(tok, text: str) -> tuple[list[int], list[int]]:
    ids = tok(text, add_special_tokens=True)["input_ids"]
    if tok.eos_token_id is not None:
        ids = [*ids, tok.eos_token_id]
    return ids, list(ids)


def encode(examples: Iterable[Example], tok, spec: DataSpec, report: RowReport,
           advance: Optional[Callable[[int], None]] = None, until: int = 0) -> list[Sample]:
    """Tokenize; apply the over-length policy (drop / truncate / error), recording each case in `report`.
    `advance(1)` after each example (progress); `until` > 0: stop once the samples fill that many sequences
    (packed sequences when data.packing=true), reading no further example (data.streaming)."""
    out, too_long, filled, rows = [], [], Filled(spec), iter(examples)
    while not (until and filled.sequences >= until):  # checked before a row is taken: a stream reads no further
        ex = next(rows, None)
        if ex is None:
            break
        if advance is not None:
            advance(1)
        if ex.text is not None:
            ids, labels = encode_text(tok, ex.text)
        else:
            ids, labels = encode_chat(tok, with_system(ex.messages, spec.system_prompt))
        if len(ids) > spec.max_length:
            if spec.overlength == "error":
                too_long.append(f"{ex.source} ({len(ids)} tokens)")
                continue
            if spec.overlength == "drop":
                report.add(f"over max_length={spec.max_length} (dropped)", ex.source)
                continue
            ids, labels = ids[: spec.max_length], labels[: spec.max_length]
        if all(t == IGNORE for t in labels[1:]):
            report.add("no trained tokens (empty or truncated-away response)", ex.source)
            continue
        task = spec.tasks.index(ex.task) if ex.task is not None else None
        out.append(Sample(ids, labels, ex.source, task=task))
        filled.add(len(ids))
    if too_long:
        more = f" (+{len(too_long) - 5} more)" if len(too_long) > 5 else ""
        raise InputError([f"{len(too_long)} samples exceed data.max_length={spec.max_length} "
                          f"(data.overlength=error): {', '.join(too_long[:5])}{more}; raise data.max_length "
                          "or set data.overlength=truncate|drop"], title="bad dataset")
    return out


class Filled:
    """How many sequences the samples so far make: one each, or greedy packs (as `pack`) counted when full."""

    def __init__(self, spec: DataSpec):
        self.packing, self.max_length, self.sequences, self.open = spec.packing, spec.max_length, 0, 0

    def add(self, n_tokens: int) -> None:
        if not self.packing:
            self.sequences += 1
        elif self.open and self.open + n_tokens > self.max_length:  # the open pack is full: it counts
            self.sequences, self.open = self.sequences + 1, n_tokens
        else:
            self.open += n_tokens


def generation_prompt(tok, ex: Example, spec: DataSpec) -> str:
    """The conversation up to (not including) its last assistant turn, ready for generation."""
    msgs = with_system(ex.messages, spec.system_prompt)
    return render(tok, msgs[:-1], generation_prompt=True)


def pack(samples: list[Sample], max_length: int) -> list[Sample]:
    """Greedy, order-preserving packing. Positions restart per sample; segments keep attention apart;
    the first label of each sample is ignored so no sample is trained to predict across a boundary."""
    packs, cur = [], None
    for s in samples:
        if cur is None or len(cur.input_ids) + len(s.input_ids) > max_length:
            cur = Sample([], [], s.source, [], [])
            packs.append(cur)
        seg = (cur.segments[-1] if cur.segments else 0) + 1
        cur.input_ids += s.input_ids
        cur.labels += [IGNORE, *s.labels[1:]]
        cur.position_ids += list(range(len(s.input_ids)))
        cur.segments += [seg] * len(s.input_ids)
    return packs
