"""`precision=fp8`: FP8 linear training with dynamic scaling (Micikevicius et al., "FP8 Formats for Deep
Learning", 2022, arXiv 2209.05433), through torchao's float8 training (`torchao.float8`) on CUDA devices of
compute capability >= 8.9, with a pure-torch emulation (layer.py) as the CPU reference.

The formats (paper, Sec. 3 and Table 1): E4M3 (max 448, no infinities) for forward tensors, E5M2 (max 57344) for
gradients. Each tensor t is scaled into the format's range before the cast, q = sat(t * s), and the product is
unscaled after an fp32-accumulated matmul (Sec. 4: per-tensor scaling). Scales are dynamic (torchao's default):
s = fmax / amax(|t|), computed from the tensor itself in every step, so no amax history is kept. A linear runs
three FP8 matmuls: y = x W^T (x, W in E4M3), dx = dy W and dW = dy^T x (dy in E5M2); layer.py writes them out.

Recipes (`precision.recipe`), as torchao's `Float8LinearConfig.from_recipe_name`:
- tensorwise: one scale per tensor, E4M3 forward / E5M2 gradients (torchao's default, fastest);
- rowwise: one scale per row along each matmul's reduction axis, E4M3 everywhere, scales rounded down to a power of
  two.

Which linears (apply.plan): every plain nn.Linear inside the decoder layers whose in and out features are
multiples of 16 (the FP8 GEMMs' requirement); never the LM head or the embeddings (the paper keeps the first and
last layers in higher precision, Sec. 4.1), never an adapter's own small linears (LoRA's A and B stay in high
precision; the frozen base linears they wrap go FP8), never a quantized base (quant=nf4 is refused). Everything
else -- norms, attention's softmax, the optimizer, the master weights -- stays in `precision.compute` / `params`.
Works under ZeRO 0-2, with full fine-tuning and with adapters; ZeRO-3 is refused (config checks).

Which path (apply.Fp8.apply): emulate=false -> torchao (`convert_to_float8_training` with our module filter);
the cross-axis checks refuse it before any model loads where the run's device has no FP8 kernels (a CPU, or a GPU
below compute capability 8.9), naming the fix: such a device, or precision.emulate=true, which runs layer.py's
emulation on any device. An offline command (eval, export on CPU) of an emulate=false run rebuilds the model with
the emulation, which computes what the kernels compute up to fp32 accumulation order.

Departures from torchao's float8 linear:
- the emulation dequantizes after the matmul ((q_a q_b) / (s_a s_b), as torch._scaled_mm does) where torchao's
  own `emulate=True` dequantizes before it (q_a / s_a) (q_b / s_b): equal up to fp32 rounding (bitwise equal for
  rowwise's power-of-two scales); the matmul runs in fp32 even under bf16 autocast (FP8 GEMMs accumulate in fp32);
- torchao's CUDA rowwise path writes its matmul outputs in bf16 even for fp32 inputs (torch._scaled_mm's rowwise
  kernel has no fp32 output) and casts back; the emulation keeps fp32 outputs;
- no fast-accumulation mode (torchao's forward uses cuBLAS's `use_fast_accum`), no `torch.compile` fusion of the
  casts, no FSDP2 float8 all-gather (DeepSpeed owns sharding here);
- the filter does not apply torchao's size heuristics (`_auto_filter_for_recipe` also skips small layers, where
  FP8 is slower on H100): every eligible layer is converted, so small models train in FP8 too.
"""
