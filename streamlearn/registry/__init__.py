"""Model management: lineage of every job, snapshot, evaluation and backtest (recorded by the
runtime), queries over it (models, lineage, compare), evaluation on a topic with a leakage
check, and rolling-origin backtests. The command line and :class:`streamlearn.Connection`
(``models``, ``lineage``, ``compare``, ``evaluate``, ``backtest``) are the public entry points."""
