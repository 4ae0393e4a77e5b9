from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tuneforge.config.spec import Caps, knob, one_of, positive
from tuneforge.peft.lora.spec import LoraSpec


@dataclass
class CordaSpec(LoraSpec):
    name: str = knob("corda", "CorDA: LoRA initialised from a context-oriented SVD of each weight (HF PEFT)")
    mode: str = knob("ipm", "ipm: adapter = top-r components of W C (learn the task, C from the train data); "
                            "kpm: adapter = bottom-r components (preserve knowledge, C from peft.knowledge_data)")
    n_samples: int = knob(256, "calibration samples streamed through the model to build each layer's covariance C "
                               "(kpm with knowledge_text=questions: packed windows)")
    knowledge_data: Optional[str] = knob(None, "kpm: file whose samples define the knowledge to preserve (e.g. TriviaQA)")
    knowledge_format: str = knob("qa", "kpm: data format of knowledge_data (a data= option: qa, jsonl, alpaca, text, ...)")
    knowledge_text: str = knob("questions", "kpm: questions = the rows' questions only (user turns; a text row's "
                                            "text), joined and packed into windows of knowledge_window tokens, as "
                                            "the reference builds C; pairs = each row (question and answer in the "
                                            "chat template) as one sample")
    knowledge_window: int = knob(2048, "kpm, knowledge_text=questions: tokens per packed window (the reference: 2048)")

    # HF PEFT refuses quantized weights; calibration runs forward passes over whole weights before the engine exists
    caps = Caps(whole_weights_at_build="the decomposition needs each full weight matrix when the model is built")

    def problems(self):
        out = super().problems() + one_of(self, "mode", ("ipm", "kpm")) + positive(self, "n_samples", "knowledge_window")
        out += one_of(self, "knowledge_text", ("questions", "pairs"))
        if self.mode == "kpm" and not self.knowledge_data:
            out.append("mode=kpm needs knowledge_data: set peft.knowledge_data=/path/to/knowledge.jsonl "
                       "(e.g. TriviaQA rows; a sample ships as pkg://tuneforge/data/examples/qa.jsonl)")
        return out

    @property
    def packs_questions(self) -> bool:
        return self.mode == "kpm" and self.knowledge_text == "questions"
