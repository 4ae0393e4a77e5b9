"""Unpadded micro-batches: the samples of a micro-batch laid end to end in one row, each attending only to itself.

A right-padded micro-batch runs every layer on its padding too (GSM8K, micro-batch 4: 23.8% of the computed tokens,
docs/performance.md) and keeps the padding's activations for backward. `unpad` lays the samples end to end in one
row of the decoder, positions restarting at each sample, and `attention` (registered with transformers as `NAME`)
runs SDPA's causal kernel on each sample's stretch of the row, the stretches given as flash-attention's varlen
kernels take them (`cu_seq_lens_q`: the cumulative lengths, 0 first). Every other layer works token by token, so
each real token's hidden state is the padded batch's, up to the float rounding of differently shaped matmuls. A
few filler tokens follow each sample in its stretch (`STRETCH_MULTIPLE`); no real token attends to them.

Without `cu_seq_lens_q` (a padding mask in eval, generation), `attention` is transformers' sdpa attention, mask and
all, and `NAME` builds its masks as sdpa does. A layer with a sliding window gets a banded mask on each stretch
longer than the window, as the sliding-window mask would be.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "tuneforge_unpadded_sdpa"
# Each sample's stretch is rounded up to a multiple of this with filler tokens. CPU attention compiles and caches a
# kernel for each block shape it meets, and stretches of every length held ~200 MB more of that cache than padded
# batches (SmolLM2 LoRA, bf16; docs/performance.md); multiples of 16 bound the shapes, for 7.5 fillers a sample on
# average.
STRETCH_MULTIPLE = 16


def attention(module, query, key, value, attention_mask, cu_seq_lens_q=None, sliding_window=None, **kwargs):
    """transformers' attention-function signature: query (1, heads, T, dim), key/value (1, kv heads, T, dim)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, sliding_window=sliding_window,
                                      **kwargs)
    bounds = cu_seq_lens_q.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        n = end - start
        band = None  # None: SDPA's causal kernel
        if sliding_window and n > sliding_window:  # query i sees keys i - window < j <= i
            lag = torch.arange(n, device=query.device)[:, None] - torch.arange(n, device=query.device)[None]
            band = (lag >= 0) & (lag < sliding_window)
        seg = slice(start, end)
        outs.append(sdpa_attention_forward(module, query[:, :, seg], key[:, :, seg], value[:, :, seg], band,
                                           **kwargs)[0])
    return torch.cat(outs, dim=1), None  # (1, T, heads, dim), as sdpa_attention_forward returns it


def register() -> str:
    """Make `NAME` known to transformers (idempotent); returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def unpad(input_ids, attention_mask=None, position_ids=None, segments=None, multiple: int = STRETCH_MULTIPLE):
    """A collated micro-batch (data/batching.collate: right-padded rows, or packed rows with `segments`) as one
    row: (input ids (1, T), positions (1, T), cumulative stretch lengths (samples + 1,), and for every position of
    the batch its index in the row (B, L), -1 at padding). Each sample's stretch is the sample, then filler tokens
    (token 0) up to a multiple of `multiple`: under the causal mask no token of the sample sees them, and no loss
    reads them."""
    rows, length = input_ids.shape
    real = segments > 0 if segments is not None else attention_mask.bool()
    if position_ids is None:
        position_ids = attention_mask.long().cumsum(1) - 1
    # one id per sample: its row, and within a packed row its segment
    row_id = torch.arange(rows, device=real.device)[:, None] * (length + 1)
    sample = (segments if segments is not None else real.long()) + row_id
    _, counts = torch.unique_consecutive(sample[real], return_counts=True)
    stretch = (counts + multiple - 1) // multiple * multiple
    starts = torch.cumsum(stretch, 0) - stretch
    of_token = torch.repeat_interleave(torch.arange(len(counts), device=real.device), counts)
    within = torch.arange(int(counts.sum()), device=real.device) - (torch.cumsum(counts, 0) - counts)[of_token]
    where = starts[of_token] + within  # each real token's place in the row
    ids = input_ids.new_zeros(int(stretch.sum()))
    positions = torch.zeros_like(ids)
    ids[where], positions[where] = input_ids[real], position_ids[real]
    index = torch.full((rows, length), -1, dtype=torch.long, device=real.device)
    index[real] = where
    cu = F.pad(torch.cumsum(stretch, 0), (1, 0)).to("cpu", torch.int32)  # read on the host by every layer: no syncs
    return ids[None], positions[None], cu, index
