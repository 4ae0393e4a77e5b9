"""Data specs: the fields every format shares, then what each format adds (its field mapping)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tuneforge.config.spec import Spec, knob, one_of, positive
from tuneforge.data.source import names_files


@dataclass
class DataSpec(Spec):
    name: str = knob("jsonl", "format (configs/data/<name>.yaml)")
    path: Optional[str] = knob(None, "training data: a file (.jsonl .json .parquet .arrow .csv .txt), a glob, a "
                               "directory (data files, or a save_to_disk directory) or a hub dataset id (docs/data.md)")
    split: str = knob("train", "split of a directory, save_to_disk DatasetDict or hub dataset (a file is one split)")
    subset: Optional[str] = knob(None, "hub dataset configuration (subset) name, e.g. main for gsm8k")
    eval_path: Optional[str] = knob(None, "separate eval data (any kind data.path takes); default: hold out "
                                    "eval_split of path")
    eval_path_split: Optional[str] = knob(None, "split of eval_path to read (default: data.split)")
    eval_split: float = knob(0.05, "held-out eval share: a fraction (<1) or a row count (>=1)")
    cache: bool = knob(True, "reuse tokenized samples from $TUNEFORGE_CACHE/tokenized (default ~/.cache/tuneforge) "
                             "when the data, tokenizer and data config are unchanged")
    streaming: bool = knob(False, "read rows lazily and tokenize only those the run trains on (corpora larger "
                                  "than memory; needs trainer.max_steps, see docs/data.md)")
    max_length: int = knob(1024, "tokens per sample (and per pack when packing)")
    overlength: str = knob("drop", "samples over max_length: drop, truncate, or error")
    bad_rows: str = knob("skip", "malformed rows (bad JSON, missing fields, empty): skip (and report) or error")
    packing: bool = knob(False, "pack several samples per sequence (attention never crosses samples)")
    bucket: bool = knob(False, "batch samples of similar length together (less padding, less diverse batches; no "
                               "effect with packing, whose sequences are full packs; docs/performance.md)")
    limit: int = knob(0, "use at most this many rows of path (0: all)")
    system_prompt: Optional[str] = knob(None, "system message added to chat samples that have none")
    checker: str = knob("none", "answer checker for generation-based exact match: none, number, exact")
    task_field: Optional[str] = knob(None, "multi-task data: field naming each row's task (one of data.tasks)")
    tasks: list[str] = knob([], "multi-task data: the task names, in id order; eval reports loss/exact match per task")

    def problems(self):
        out = self.task_problems() + one_of(self, "overlength", ("drop", "truncate", "error")) + one_of(self, "bad_rows", ("skip", "error"))
        out += one_of(self, "checker", ("none", "number", "exact"))
        out += positive(self, "max_length") + positive(self, "limit", "eval_split", allow_zero=True)
        if self.needs_path and not self.path:
            out.append(f"data.path is required for data={self.name}: set data.path=/path/to/train.jsonl "
                       f"(samples ship in pkg://tuneforge/data/examples/)")
        for key, path, split in (("split", self.path, self.split),
                                 ("eval_path_split", self.eval_path, self.eval_path_split or self.split)):
            if path and split != "train" and names_files(path):
                out.append(f"data.{key}={split}: {path} names files, which hold one split; point "
                           f"data.{'path' if key == 'split' else 'eval_path'} at that split's files instead")
        return out

    def cross_problems(self, specs: dict) -> list[str]:
        """data.streaming=true takes the rows the run trains on from the head of the stream."""
        if not self.streaming:
            return []
        out, fix = [], "or set data.streaming=false"
        if not self.needs_path:
            out.append(f"data.streaming=true reads files; data={self.name} generates its rows: set data.streaming=false")
        if specs["trainer"].max_steps <= 0:
            out.append("data.streaming=true needs the run's length up front (a stream has no epochs): set "
                       f"trainer.max_steps=N, {fix}")
        if not self.eval_path and self.eval_split > 0:
            out.append("data.streaming=true holds out no eval rows from the stream: set data.eval_path=<eval data> "
                       f"or data.eval_split=0, {fix}")
        if specs["selection"].name != "none":
            out.append(f"selection={specs['selection'].name} chooses from the whole pool, but data.streaming=true "
                       f"reads only the rows the run trains on: set selection=none, {fix}")
        return out

    needs_path = True

    def task_problems(self) -> list[str]:
        out = []
        if self.task_field and not self.tasks:
            out.append(f"task_field={self.task_field!r} needs the task names: set data.tasks=[name1,name2,...]")
        if len(set(self.tasks)) != len(self.tasks):
            out.append(f"tasks={self.tasks} lists a task twice")
        if self.tasks and self.packing:
            out.append("packing=true with data.tasks: a packed sequence would mix tasks; set data.packing=false")
        return out


@dataclass
class JsonlSpec(DataSpec):
    name: str = knob("jsonl", "generic prompt/response rows")
    prompt_field: str = knob("prompt", "field holding the user prompt")
    response_field: str = knob("response", "field holding the target response (trained)")
    system_field: Optional[str] = knob(None, "optional field holding a per-row system message")
    answer_field: Optional[str] = knob(None, "optional field holding the reference answer for the checker")


@dataclass
class AlpacaSpec(DataSpec):
    name: str = knob("alpaca", "instruction/input/output rows")
    instruction_field: str = knob("instruction", "field holding the instruction")
    input_field: str = knob("input", "optional field holding extra input (appended to the instruction)")
    output_field: str = knob("output", "field holding the target response (trained)")


@dataclass
class ChatSpec(DataSpec):
    name: str = knob("chat", "conversations: a list of messages with roles")
    messages_field: str = knob("messages", "field holding the list of messages")
    role_field: str = knob("role", "field of a message holding its role")
    content_field: str = knob("content", "field of a message holding its text")
    role_map: dict[str, str] = knob({}, "rename roles to system/user/assistant, e.g. {human: user, gpt: assistant}")


@dataclass
class QASpec(DataSpec):
    name: str = knob("qa", "question/answer rows (e.g. GSM8K)")
    question_field: str = knob("question", "field holding the question")
    answer_field: str = knob("answer", "field holding the full answer (trained)")
    answer_pattern: Optional[str] = knob(r"####\s*(.+?)\s*$", "regex whose group 1 is the final answer to check")
    checker: str = knob("number", "answer checker: none, number, exact")


@dataclass
class TextSpec(DataSpec):
    name: str = knob("text", "plain text corpus: every token is trained")
    text_field: str = knob("text", "field holding the text (.jsonl); a .txt file is split on blank lines")


@dataclass
class QuickstartSpec(DataSpec):
    name: str = knob("quickstart", "generated arithmetic word problems (no files needed)")
    n_train: int = knob(2000, "training problems generated")
    n_eval: int = knob(100, "held-out problems (disjoint from training)")
    digits: int = knob(2, "digits per operand")
    ops: list[str] = knob(["+"], "operations drawn from: + and -")
    seed: int = knob(0, "generator seed (problems are identical for a given seed)")
    system_prompt: Optional[str] = knob("Answer with the number only.", "system message for every problem")
    checker: str = knob("number", "answer checker")
    max_length: int = knob(128, "tokens per sample")
    needs_path = False

    def problems(self):
        out = super().problems() + positive(self, "n_train", "n_eval", "digits")
        bad = [o for o in self.ops if o not in ("+", "-")]
        out += [f"ops {bad} not supported: use + and -"] if bad else []
        missing = [t for t in self.tasks if TASK_OPS.get(t) not in self.ops]
        return out + ([f"tasks {missing}: quickstart tasks are add (+) and sub (-), each needing its op in data.ops"]
                      if missing else [])


TASK_OPS = {"add": "+", "sub": "-"}  # quickstart: with data.tasks, each problem is labelled by its operation
