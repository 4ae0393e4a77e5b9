"""`merge=pcb`: PCB-Merging, Du et al., 2024 (arXiv 2410.02396), "Parameter Competition Balancing for Model
Merging". Written here from the paper and the authors' released code (duguodong7/pcb-merging, pcb-merging.py):
no installable package implements it.

For n task vectors tau_i of one parameter (paper Section 3.2-3.3; the forms of the released code):
  intra-balancing  beta_intra,i = exp(n * Norm(|tau_i|)^2)         (paper Eq. 3: Softmax(n * Norm(tau_i ⊙ tau_i)))
  inter-balancing  beta_inter,i = tanh(tau_i ⊙ sum_j tau_j)         (paper Eq. 4: sum_j Softmax(Norm(tau_i ⊙ tau_j)))
  balancing        beta_i = beta_intra,i ⊙ beta_inter,i             (Eq. 5)
  drop             beta_hat_i = beta_i on its top r fraction, 0 elsewhere                      (Eq. 6)
  merge            tau_m = sum_i beta_hat_i ⊙ tau_i / sum_i beta_hat_i;  theta = theta_base + lam * tau_m   (Eq. 7)
Norm is min-max normalisation over the tensor; lam is searched in [0.8, 1.3] as in the paper (the released code
searches one lam per task with nevergrad's NGOpt in that box; tuneforge searches one shared lam on a grid with
a bounded number of evaluations, `merge.max_evals`).

Departures from the released code, and why:
- Each parameter tensor is balanced on its own (Norm, the top-r cut and the outlier clamp per tensor); the
  reference flattens the whole model into one vector per task, which for an LLM is T model-sized copies.
- The kept weights are beta itself, clipped at 0 (Eq. 6-7); the reference min-max rescales each task's kept
  weights to [0, 1] (so its lowest kept entry gets weight 0). With beta as written, one task with r = 1 gives
  tau_m = tau exactly (task arithmetic), the paper's reduction; entries whose sign opposes the sum
  (beta_inter < 0) never get a positive weight, as with the reference's normalisation.
- Outliers: |tau_i| is clamped at its `clamp`-quantiles before Norm (the reference's 1e-4), with the cut at
  floor(clamp x numel) entries from each end, so small tensors (norms, biases) are not clamped at all; the
  reference's index formula always clamps the largest entry of a tensor of fewer than 1/clamp entries.
- Where every task's kept weight is 0 the merged entry is 0 (the reference divides by a 1e-12 floor: the same).
"""
