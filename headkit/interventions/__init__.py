"""Causal interventions on a model's heads (SPEC section 4).

- `metrics`: what an intervention is measured by: factories that turn a
  `TaskBatch` into a function ``logits -> scalar`` (logit difference, answer
  log-probability, accuracy, loss).
- `ablation`: replace heads' outputs (``hook_z``) with zero, their mean over a
  reference batch, or their value on another prompt; sweeps over heads; attention
  knockout of one query->key edge.
- `activation_patching`: move activations between a clean and a corrupted run
  (denoising and noising), swept over heads, layers and positions.
- `path_patching` and `attribution`: path patching (IOI App. B) and its
  first-order estimate.

Shared by them:

- `sites`: every site (head and layer), its hook name, its head axis, how a
  patch writes into it and which models have it; the names the command line
  offers (ablation methods, directions). Imports no torch.
- `engine`: the one stacked forward (restart at a layer from the cached
  residual, ``k`` copies along the batch axis, memory-bounded passes split
  across ranks, finite logits per copy).

Each module is imported on its own; this package file imports nothing.
"""
