"""Analysis scripts that reproduce the published results of SPEC section 5.

Each ``rN_*.py`` is a script with a small frozen config dataclass and a
``main(cfg) -> pandas.DataFrame`` that returns its table and writes
``figures/<name>/`` (``results.csv``, ``config.json``, ``summary.json``, one
figure as HTML + PNG). Run one as ``python analyses/r5_induction.py [--out DIR]
[--quick]``; ``--quick`` is a seconds-long smoke run with tiny settings.
"""
