"""`merge=ties`: TIES-Merging, Yadav et al., 2023 (arXiv 2306.01708), "Resolving interference when merging models".

Per parameter, with tau_t the task vectors (Alg. 1):
  1. trim: keep the top-k entries of each tau_t by magnitude (k = density x numel), zero the rest;
  2. elect: gamma = sgn(sum_t trimmed tau_t) (the sign of larger total mass; 0 counts as +);
  3. disjoint mean: tau_m[p] = mean of trimmed tau_t[p] over the t whose sign equals gamma[p];
  theta = theta_base + lam * tau_m.
All three steps are PEFT's `merge_utils.ties` (magnitude_prune, calculate_majority_sign_mask "total",
disjoint_merge) on the full deltas. Departure from the authors' code: trimming ranks each parameter's entries
(PEFT's per-tensor top-k), where the reference flattens the whole model into one vector per task first.
"""
