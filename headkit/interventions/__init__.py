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

Each module is imported on its own; this package file imports nothing.
"""
