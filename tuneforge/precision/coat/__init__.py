"""COAT: Compressing Optimizer states and Activations for memory-efficient FP8 training (Xi et al., arXiv
2410.19313), `precision=coat`; reference code NVlabs/COAT (also on PyPI as `fp8-coat`).

1. FP8 optimizer states with dynamic range expansion (section 4; optimizer.py, quant.py): for each group of 128
   elements of AdamW's first and second moments, M = max|x|, m0 = min non-zero |x|, R = M / m0, c = sqrt(M m0);
   the expansion f(x) = sign(x) (|x| / c)^k with the largest k = floor(expand_min log2(448^2/2) / log2 R) /
   expand_min fills E4M3's range (eq. 4-6: k log2 R <= log2(448^2/2)); q = E4M3(f(x) / s), s = (M / c)^k / 448,
   and s, k, c are kept per group. Each step dequantizes, runs AdamW in fp32 and re-quantizes (Algorithm 1).
   Reference defaults: group 128, expand_min 16, both moments E4M3.
2. Mixed-granularity FP8 activations (section 5; layer.py): linear layers save their input per tensor in FP8,
   non-linear layers (SiLU, the gated multiply, RMSNorm) per group of 1 x 16; E4M3 forward, E5M2 backward.

CoatAdamW is the client optimizer handed to DeepSpeed (the mode owns its optimizer), so it runs under ZeRO 0-2,
on flat fp32 partitions at ZeRO 1-2, and its state travels in DeepSpeed's checkpoints (bitwise resume). A world
size change is refused with a message: per-group scales of a rank's flat partition cannot be split per parameter
for DeepSpeed's universal format. ZeRO-3 and offload are refused before the run (config/checks.py).

Departures from the reference code, and why:
- m0 is the true minimum non-zero magnitude of the group, as the paper states. The reference kernel's warp
  reduction keeps a thread's own zero as the minimum (then adds 1e-30), so a group with a zero in some lanes
  gets R ~ 1e30 and k ~ 1/8 (range compressed, not expanded). A group whose elements share one magnitude
  (R = 1: the reference computes k = inf) takes k = 1; an all-zero group stores zeros exactly. k is capped at
  64: for R close to 1 the reference's k reaches thousands, and its float32 (|x|/c)^k and (M/c)^k overflow to
  inf (q = inf/inf = NaN; seen on SmolLM2 at step 2). At k = 64 the float32 power error is ~1e-5 relative.
- The AdamW update is torch's order (decay p by 1 - lr wd, then the Adam step); the reference kernel applies
  lr (m / denom + wd p) in one expression: equal up to float rounding.
- Under ZeRO 1-2 the groups of 128 run along DeepSpeed's flat partition, so one group may span the end of one
  parameter and the start of the next (the reference groups each parameter tensor on its own, under FSDP).
- The reference runs the linear layers' GEMMs in FP8 and passes FP8 activations between its fused kernels (a
  rewritten Llama/OLMo). Here forward outputs are computed as without COAT (fp32 or bf16 autocast, the same
  linear and norm math as Hugging Face's) and only what autograd saves is FP8; FP8 matmuls are precision=fp8's.
  Gradients are quantized to E5M2 and back at each compressed layer's backward, emulating the reference's FP8
  backward inputs; the backward GEMMs use the weights in the compute dtype, not FP8.
- SiLU and the multiply are one function saving gate and up (per group), recomputing SiLU(gate) in backward;
  the reference saves gate, SiLU(gate) and up. RMSNorm keeps its per-row 1/rms in float32 (one value per token).
  Attention (SDPA) keeps its inputs in the compute dtype, as the reference keeps FlashAttention's in BF16.
- The LM head's input is not compressed (the reference keeps the head in BF16 too).
- CUDA: the optimizer step uses the reference's compiled kernel (`qoptim_cuda`) when importable, else the same
  pure-torch step on the GPU; activation quantization is pure torch on every device.
"""
