"""Load pretrained Hugging Face checkpoints, offline, as the models headkit's analyses read.

- `headkit.loading.files`: a Hugging Face directory, read without building a
  model: where it lives (local or the hub cache), ``config.json``, the weight files
  (headers, one tensor at a time), the saved tokenizer. Needs no TransformerLens.
- `headkit.loading.options`: the loaders' checked options (`LoadOptions`, `Processing`).
- `headkit.loading.gptj`: GPT-J's config and weight checks, and `load_gptj`.

`headkit.loading.pretrained.load_pretrained` (every causal LM TransformerLens's bridge
covers) checks through the same `files` and `options`; both end in
`headkit.bridge.build.boot` (``from_pretrained`` offline, wrapped in place).
"""
