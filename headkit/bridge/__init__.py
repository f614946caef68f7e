"""headkit on TransformerLens's `TransformerBridge` (TransformerLens 3.9 and 4.x).

- `headkit.bridge.build`: `wrap` a Hugging Face model in place (compatibility mode,
  raw weights), `boot` a local directory offline; headkit's GPT-J attention where
  TransformerLens's adapter hides what headkit reads.
- `headkit.bridge.attention`: that GPT-J attention (every hook in its place).
- `headkit.bridge.blocks`: run blocks alone with exactly the inputs the full forward
  gave them (rotary embeddings, causal mask), on a bridge or a HookedTransformer.
- `headkit.bridge.probe`: which attention hooks a loaded model has faithfully, and
  `require`, which refuses an analysis that needs one it lacks.

Nothing here imports ``HookedTransformer``, so it imports on TransformerLens 4.x.
"""
