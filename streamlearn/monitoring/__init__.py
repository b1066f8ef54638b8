"""Model validation and data monitoring around training.

- ``gate_expr``: the ``--gate`` expressions (``rmse<=3.2``, ``auc>=published-0.005``), parsed without eval;
- ``gate``: the decision that stands between finalize and subscribers (blessed / rejected / forced);
- ``profile``: a job's training profile (KLL quantile sketches, counts, min/max, labels), merged exactly once;
- ``drift``: a live window against a profile (PSI, sketch-based KS, thresholds that respect sample sizes);
- ``monitor``: ``streamlearn monitor``: windows of a live topic, reports, retraining on drift.
"""
