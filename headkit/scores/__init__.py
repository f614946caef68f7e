"""Head scores: positional/symbolic, RoPE, discrepancy, classic detectors, circuits, census, dynamics."""
