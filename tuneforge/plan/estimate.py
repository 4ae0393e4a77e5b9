"""Bytes per rank of one training step, from the specs and the model's config (shapes only, nothing loads).

Every term is what the run's own code path allocates on the device (docs/planning.md derives each):

- **weights**: every parameter in `precision.params` (tied tensors once); a quantized base stores its layers'
  linear weights as the `quant` spec's `weight_bytes` says, a frozen base trained through autocast in the compute
  dtype (`PrecisionSpec.frozen_dtype`); adapters add theirs. ZeRO-3 partitions over the
  ranks, except parameters under `stage3_param_persistence_threshold` elements (kept whole), and gathers the
  layer in use (or the largest tensor, e.g. the head during the loss's backward) plus the prefetch bucket
  (on one rank the partition is the whole tensor: nothing is gathered).
- **gradients**: one per trainable element, in the weight dtype at ZeRO-0/1 (ZeRO-1 reduces them whole); from
  ZeRO-2 a fp32 partition (1/world) plus DeepSpeed's reduce bucket (`reduce_bucket_size` elements, two with
  `overlap_comm`).
- **optimizer**: the optimizer's state bytes per trained element (`optim` spec's `state_bytes`, or the precision's
  compressed moments, e.g. COAT's FP8 ones) plus DeepSpeed's fp32 master partition from ZeRO-1 on (a copy even
  of fp32 weights) or under half-precision weights; partitioned from ZeRO-1, on the CPU with
  `zero.offload_optimizer`.
- **activations**: the tensors a Llama-style block saves for backward (`block_saved`) for micro-batch x sequence
  tokens, per layer; with gradient checkpointing one hidden state per layer plus one block recomputed.
- **logits**: the LM head runs on trained positions only (runner/objective.py): their hidden states, the logits
  in the compute dtype, the fp32 upcast when that is not fp32, log-softmax's saved output and, in backward, two
  fp32 gradients of the same shape. With `trainer.loss_chunk` (models/chunked_loss.py, not under ZeRO-3) only one
  chunk's logits exist at a time: the hidden states' gradient (made in forward) and one chunk of fp32 logits
  (turned into their gradient in place), plus its copy in the compute dtype when that is not fp32; a method that
  trains base weights (taken to include the head) adds the head's fp32 gradient sum and one chunk's term of it.
- **step**: the optimizer step's temporaries. At ZeRO-0 the larger of AdamW's two (square root and quotient of
  the largest tensor) and the flat copy of the gradients DeepSpeed all-reduces after backward (up to
  `MEMORY_OPT_ALLREDUCE_SIZE` elements; made even on one rank). From ZeRO-1 the step runs on the rank's flat
  fp32 partition: about three fp32 copies of it (a float64 copy for the gradient norm, then AdamW's two).

The peak is the larger of two moments: the start of backward (weights, optimizer states, every saved activation,
the loss's gradient buffers) and the optimizer step (weights, optimizer states, full gradients, step temporaries).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
ALLREDUCE_BUCKET = 500_000_000  # elements per flat all-reduce buffer at ZeRO-0 (DeepSpeed engine.MEMORY_OPT_ALLREDUCE_SIZE)


@dataclass
class Shape:
    """What the plan needs of a decoder-only model's config (and its meta-device parameter sizes)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    vocab: int
    parts: object  # models.footprint.Parts

    @property
    def sizes(self) -> tuple:  # elements of every distinct parameter
        return self.parts.sizes

    @classmethod
    def of(cls, config) -> Shape:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.hidden_size, config.num_hidden_layers, heads,
                   getattr(config, "num_key_value_heads", None) or heads, head_dim,
                   getattr(config, "intermediate_size", 4 * config.hidden_size), config.vocab_size,
                   _parts(config.to_json_string()))


@functools.lru_cache(maxsize=8)
def _parts(config_json: str):
    """The model's Parts, built once per architecture (on the meta device: seconds for a 70B model)."""
    import json

    from transformers import AutoConfig

    from tuneforge.models.footprint import parts

    fields = json.loads(config_json)
    return parts(AutoConfig.for_model(fields.pop("model_type"), **fields))


@dataclass
class Setting:
    """The knobs of a run the plan depends on (`from_specs`), changed by the fitting candidates."""

    world: int
    micro_batch: int
    grad_accum: int
    seq_len: int
    checkpointing: bool
    stage: int
    offload_optimizer: bool
    offload_param: bool
    peft: object  # the tuning method's spec
    reduce_bucket: int
    prefetch_bucket: int
    persistence: int
    overlap_comm: bool
    loss_chunk: int = 0

    @classmethod
    def from_specs(cls, specs: dict, world: int) -> Setting:
        z, t = specs["zero"], specs["trainer"]
        return cls(world, t.micro_batch_size, t.grad_accum, specs["data"].max_length,
                   specs["model"].gradient_checkpointing, z.stage, z.offload_optimizer != "none",
                   z.offload_param != "none", specs["peft"], z.reduce_bucket_size, z.stage3_prefetch_bucket_size,
                   z.stage3_param_persistence_threshold, z.overlap_comm, t.loss_chunk)


def block_saved(shape: Shape, tokens: int, compute_bytes: float) -> float:
    """Bytes one Llama block (RMSNorm -> attention -> RMSNorm -> gated MLP, HF's eager/SDPA code) saves for
    backward, in elements of `tokens` x width: the block input; per RMSNorm the normalised input and its weighted
    output; the rotated queries and keys and the values (SDPA's inputs); the attention output and its contiguous
    copy (o_proj's input); the residual sum; gate, up, SiLU(gate) and their product (down_proj's input)."""
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim
    q = shape.heads * shape.head_dim
    per_token = h + 2 * h + q + 2 * kv + 2 * q + h + 2 * h + 4 * shape.mlp
    return tokens * per_token * compute_bytes


def activations(shape: Shape, s: Setting, compute_bytes: float) -> float:
    tokens = s.micro_batch * s.seq_len
    one = block_saved(shape, tokens, compute_bytes)
    if s.checkpointing:  # each block keeps its input; backward recomputes one block at a time
        return shape.layers * tokens * shape.hidden * compute_bytes + one
    return shape.layers * one + 2 * tokens * shape.hidden * compute_bytes  # + embeddings out, final norm


def logits(shape: Shape, s: Setting, compute_bytes: float) -> float:
    """Head and loss buffers, every position but the last trained (the worst case): the head's input rows, then
    the larger of forward (the logits, their fp32 upcast, log-softmax's output) and backward (log-softmax's
    saved output and the incoming gradient, then the logits' gradient in the compute dtype)."""
    n = s.micro_batch * (s.seq_len - 1)
    if s.loss_chunk and s.stage < 3:  # one chunk of logits at a time (a ZeRO-3 head goes the plain way)
        chunk = min(s.loss_chunk, n) * shape.vocab * (4 + (compute_bytes if compute_bytes != 4 else 0))
        head_grad = 2 * 4 * shape.vocab * shape.hidden if s.peft.caps.trains_base_weights else 0  # sum + one term
        return n * shape.hidden * compute_bytes + chunk + head_grad
    nv = n * shape.vocab
    half = compute_bytes != 4
    forward = compute_bytes * nv + (4 * nv if half else 0) + 4 * nv
    backward = 3 * 4 * nv
    return n * shape.hidden * compute_bytes + max(forward, backward)


def breakdown(specs: dict, shape: Shape, s: Setting) -> dict[str, float]:
    """Per-rank bytes of each term, the two candidate peaks and the peak (docstring above)."""
    prec, optim, quant = specs["precision"], specs["optim"], specs["quant"]
    p = shape.parts
    wb = DTYPE_BYTES[prec.params]
    cb = DTYPE_BYTES.get(prec.compute, 4) if prec.compute != "auto" else 4
    label, n_train = s.peft.trainable_estimate(p) or ("", p.total)
    adapter = not s.peft.caps.trains_base_weights
    world = s.world

    weights = p.total * wb + (n_train * wb if adapter else 0)
    if quant.weight_bytes(1, 1) is not None:
        weights += p.n_layers * (quant.weight_bytes(p.linear_weights, p.linear_rows) - p.linear_weights * wb)
    elif prec.frozen_dtype(s.peft.caps, s.stage):  # frozen linears in the compute dtype (never for compute=auto)
        weights -= p.n_layers * p.linear_weights * (wb - cb)
    if s.stage == 3:
        persistent = sum(n for n in shape.sizes if n < s.persistence) * wb
        gathered = min(p.total, max(p.per_layer, max(shape.sizes)) + s.prefetch_bucket) * wb if world > 1 else 0
        weights = persistent + (0 if s.offload_param else (weights - persistent) / world) + gathered

    states = n_train * prec_state_bytes(prec, optim.state_bytes())
    master = 4 * n_train if (s.stage >= 1 or wb != 4) else 0
    part = world if s.stage >= 1 else 1
    optimizer = 0.0 if s.offload_optimizer else (states + master) / part

    grad_b = wb if s.stage == 0 else 4
    if s.stage >= 2:
        bucket = s.reduce_bucket * wb * (2 if s.overlap_comm else 1)
        grads_full = (0 if s.offload_optimizer else 4 * n_train / world) + bucket
        grads_backward = bucket
        if s.stage == 3 and not adapter and n_train >= max(shape.sizes):  # the head's whole fp32 gradient, made
            grads_backward += 4 * max(shape.sizes)  # while the loss's buffers live, before its reduction
    else:
        grads_full = n_train * grad_b + (4 * n_train / world if s.stage == 1 else 0)
        grads_backward = 0.0
        if wb != 4 and s.stage == 0:  # bf16 optimizer: fp32 gradient accumulators beside the master copy
            grads_full += 4 * n_train
    if s.offload_optimizer:
        step = 0.0
    elif s.stage == 0:  # AdamW's two temporaries of the largest trained tensor, or the flat all-reduce copy
        largest = max((n for n in shape.sizes if n <= n_train), default=n_train) if not adapter else 0
        step = max(2 * 4 * largest, min(n_train, ALLREDUCE_BUCKET) * grad_b)
    else:  # on the flat fp32 partition: a float64 copy for the norm, then AdamW's sqrt and division
        step = 3 * 4 * n_train / world

    acts = activations(shape, s, cb * prec_activation_scale(prec, cb))
    loss = logits(shape, s, cb)
    backward_start = weights + optimizer + grads_backward + acts + loss
    optimizer_step = weights + optimizer + grads_full + step
    return {"method": label, "trainable": n_train, "total_params": p.total, "weights": weights,
            "gradients": grads_full, "optimizer": optimizer, "activations": acts, "logits": loss, "step": step,
            "backward_start": backward_start, "optimizer_step": optimizer_step,
            "peak": max(backward_start, optimizer_step),
            "cpu_offloaded": (states + master) / part if s.offload_optimizer else 0.0}


def prec_state_bytes(prec, optim_bytes: float) -> float:
    """The precision mode's optimizer-state bytes per element (COAT's FP8 moments), else the optimizer's."""
    own = getattr(prec, "state_bytes", None)
    return own(optim_bytes) if own is not None else optim_bytes


def prec_activation_scale(prec, compute_bytes: float) -> float:
    own = getattr(prec, "activation_scale", None)
    return own(compute_bytes) if own is not None else 1.0
