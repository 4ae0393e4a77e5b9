"""`merge=task_arithmetic`: Ilharco et al., 2023 (arXiv 2212.04089), "Editing models with task arithmetic".

Eq. (1)-(2): tau_t = theta_t - theta_pre; theta = theta_pre + lam * sum_t tau_t. The sum is PEFT's
`merge_utils.task_arithmetic` (unit weights); lam is the one coefficient (default 1/T: the plain average of the
fine-tunes), searched in `lam_range` with merge.search=true (the paper picks lam in [0, 1] on held-out data).
"""
