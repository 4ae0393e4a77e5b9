"""`merge=lines`: LiNeS, Wang et al., 2025 (arXiv 2410.17146), "Post-training layer scaling prevents forgetting and
enhances model merging". Written here from the paper and the authors' code (`LiNeS_scaling`): no installable
package implements it.

The task vectors are summed (task arithmetic, tau_MTL = sum_t tau_t), then block l of L (0-based) is scaled by

    lambda(l) = alpha + beta * l / (L - 1)                  (paper Eq. 2, written 1-based as (l - 1)/(L - 1))

so shallow blocks keep little of the (interfering) task-specific change and deep blocks keep more. Parameters
outside the blocks -- token embeddings, the final norm and the LM head -- get alpha, as in the authors' code
(every key that matches no block gets the minimum scaling). Multi-task merging (Section 4.2): alpha =
(1/T) * ||sum_t tau_t|| / ||tau_MTL||, which is 1/T for the task-arithmetic sum used here, and beta is tuned on
held-out data; `alpha: null` is that 1/T, `merge.search=true` searches beta in `beta_range` (and alpha in
`alpha_range` when set). Departure: blocks are the decoder's layer list found by module identity
(models/layers.py), not the authors' ".{i}." substring match on parameter names.
"""
