"""The training objective as an nn.Module, so the DeepSpeed engine wraps exactly what is trained.

Next-token cross-entropy over trained tokens (labels != -100). In training the loss is a property of the global
batch: each micro-batch's summed token loss is divided by `step_divisor` (from the trained-token count of the
whole global batch), so the step's gradient and logged loss are those of one big batch, whatever the micro-batch
size, gradient accumulation, rank count or ZeRO stage. A micro-batch's own token mean would weigh the tokens of
short samples more whenever micro-batches differ in trained tokens. Evaluation sums (`reduction="sum"`). For
decoder families whose LM forward is just `head(decoder(x))`, the head is applied only at trained positions:
with short answers and large vocabularies the full-vocabulary logits at every position are most of the
compute and memory of a step, and never enter the loss. There the head and the loss are also computed
`loss_chunk` tokens at a time, each chunk's gradient made in forward (`models/chunked_loss.py`), so no
[tokens, vocab] tensor is kept for backward (trainer.loss_chunk=0: in one piece). Other families go through the
model's own forward.

Batches are right-padded (data/batching.collate). For the plain causal decoders on sdpa attention, the decoder
runs on the micro-batch unpadded (`unpad`, models/unpad.py): the samples end to end in one row, positions
restarting at each sample, attention causal within each sample only (packed rows: within each packed sample), so
padding is neither computed nor kept for backward; each trained position's hidden state is the padded batch's, up
to float rounding (`tests/unit/runner/test_objective.py` compares loss and gradients with Hugging Face's masked
forward). With `unpad=False`, or multi-task batches (routed per row), the padded batch runs under the causal mask
alone: no real position ever attends to padding, so the padding mask is dropped and attention runs its causal
kernel; padded positions carry no label, so the loss and every gradient are unchanged. Packed batches then keep
their block-diagonal mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.data.batching import packed_attention_mask
from tuneforge.data.encode import IGNORE
from tuneforge.models.chunked_loss import chunkable, head_loss
from tuneforge.models.layers import unwrap
from tuneforge.models.unpad import NAME, register, unpad
from tuneforge.peft.routing import set_tasks

# Model types whose CausalLM forward is exactly lm_head(decoder(...)) (no logit soft-capping or scaling,
# no auxiliary router loss), so computing the head on a subset of positions is exact.
PLAIN_HEAD_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "gemma", "smollm3"}


def step_divisor(global_tokens: int, micro_batches: int) -> float:
    """What each micro-batch divides its summed token loss by in training. DeepSpeed averages gradients over the
    step's `micro_batches` (grad_accum x ranks: backward scales by 1/grad_accum, the gradient all-reduce averages
    over ranks), so micro-batch losses of sum * micro_batches / global_tokens average to the gradient of
    (sum of every token loss of the global batch) / global_tokens; their mean is that loss too."""
    return max(global_tokens, 1) / micro_batches


def token_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Summed cross-entropy of each row of `logits`, each token's scaled by its weight where given."""
    if weights is None:
        return F.cross_entropy(logits.float(), target, reduction="sum")
    return (F.cross_entropy(logits.float(), target, reduction="none") * weights.float()).sum()


class CausalLM(nn.Module):
    def __init__(self, lm: nn.Module, loss_chunk: int = 0, unpad: bool = True):
        super().__init__()
        from transformers import PreTrainedModel

        self.lm, self.loss_chunk = lm, loss_chunk
        base = unwrap(lm)
        self.sparse_head = getattr(base.config, "model_type", None) in PLAIN_HEAD_TYPES
        # Unpadded micro-batches need the decoder to be the model's own (a tuning method's replacement, e.g. LST's
        # ladder, runs blocks of its own) and its attention transformers' sdpa, which the unpadded kind extends.
        self.unpad = unpad and self.sparse_head and isinstance(base.get_decoder(), PreTrainedModel) and \
            base.config._attn_implementation in ("sdpa", NAME)
        if self.unpad:
            base.set_attn_implementation(register())

    def _mask(self, attention_mask, segments):
        if segments is None:
            return None if self.sparse_head else attention_mask
        impl = getattr(unwrap(self.lm).config, "_attn_implementation", "sdpa")
        dtype = None if impl in ("sdpa", NAME) else next(self.lm.parameters()).dtype
        return packed_attention_mask(segments, dtype)

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None, segments=None, reduction="mean",
                task_ids=None, divisor: float | None = None, weights=None):
        """reduction="mean": the summed token loss over `divisor` (training, see `step_divisor`), or by default
        over this batch's own trained tokens; "sum": the pair (summed token loss, trained tokens). `weights` (one
        per sample, from a selector) scale each sample's token losses; the divisor still counts every trained
        token, so a weight changes only its sample's share, whatever the batch split (weighted batches compute the
        head in one piece)."""
        set_tasks(self.lm, task_ids)  # multi-task batches: route each sample to its task's modules
        target = labels[:, 1:]
        keep = target != IGNORE
        token_w = None if weights is None else weights[:, None].expand(keep.shape)[keep]
        if self.sparse_head:
            base = unwrap(self.lm)
            if self.unpad and task_ids is None:
                ids, positions, cu, index = unpad(input_ids, attention_mask, position_ids, segments)
                # an all-ones mask: transformers then builds no mask (restarting positions would make it build a
                # [T, T] one for packed rows, unused here)
                hidden = base.get_decoder()(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions,
                                            cu_seq_lens_q=cu, use_cache=False).last_hidden_state
                picked = hidden[0][index[:, :-1][keep]]
            else:
                hidden = base.get_decoder()(input_ids=input_ids, attention_mask=self._mask(attention_mask, segments),
                                            position_ids=position_ids, use_cache=False).last_hidden_state
                picked = hidden[:, :-1][keep]
            head = base.get_output_embeddings()
            if self.loss_chunk and chunkable(head) and token_w is None:
                total = head_loss(picked, head, target[keep], self.loss_chunk)
            else:
                total = token_loss(head(picked), target[keep], token_w)
        else:
            out = self.lm(input_ids=input_ids, attention_mask=self._mask(attention_mask, segments), position_ids=position_ids,
                          use_cache=False)
            total = token_loss(out.logits[:, :-1][keep], target[keep], token_w)
        count = keep.sum()
        if reduction == "sum":
            return torch.stack([total, count.to(total.dtype)])
        return total / (count.clamp(min=1) if divisor is None else divisor)
