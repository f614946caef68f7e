"""Training GPT-J-style models on headkit's tasks, and the run directories it writes.

Layers, bottom to top (each imports only those below it):

- `headkit.training.layout`: the run directory's names, listing, status, lock and
  output-path checks; torch-free, for ``headkit info`` and ``--help``.
- `headkit.training.config`: `TrainConfig`, the presets, the learning-rate schedule,
  ``run.json`` and ``metrics.csv`` read back.
- `headkit.training.checkpoints`: a checkpoint written all at once, read back checked.
- `headkit.training.runs`: a path -> the checkpoint it names, loaded once; an output
  directory -> reuse, resume or refuse.
- `headkit.training.loop`: `train` and `train_or_reuse`.

The public names are exported lazily from `headkit` (``headkit.train``); this
package imports nothing itself, so importing its torch-free layout stays light.
"""
