"""The report pages and the demo: analyses assembled into tables, figures and one HTML page.

- `headkit.report.page`: `Section` and `report_html` (one self-contained page, offline).
- `headkit.report.sections`: one section builder per analysis (accuracy, census,
  dynamics, ablation, patching, attention).
- `headkit.report.run`: `build_report` (a trained run or checkpoint -> tables and
  sections) and `write_report` (the folder: CSVs, PNGs, the page), which ``headkit
  report``, the demo and notebooks call.
- `headkit.report.model`: the report of a pretrained model (find, confirm, roles, look).
- `headkit.report.paper`: PosSym-2026's published numbers and the computed verdicts.
- `headkit.report.demo`: ``headkit demo``'s pipeline (`run_demo`).

Nothing here is imported by the layers below (models, tasks, scores, interventions,
training); this package's ``__init__`` imports nothing, so ``headkit --help`` stays fast.
"""
