"""`merge=dare`: DARE, Yu et al., 2024 (arXiv 2311.03099), "Language models are Super Mario".

Eq. (1)-(2): each entry of each task vector is dropped with probability p and the survivors are rescaled by
1/(1 - p): tau_hat = (m ⊙ tau) / (1 - p), m ~ Bernoulli(1 - p), so E[tau_hat] = tau. The sparsified vectors are
then merged by task arithmetic (Section 4.3): theta = theta_base + lam * sum_t tau_hat_t. Both steps are PEFT's
`merge_utils.dare_linear` (random_pruning with rescale, then the weighted sum) with density = 1 - p. The drops
draw from torch's global generator, seeded with merge.seed before the first parameter (deterministic).
"""
