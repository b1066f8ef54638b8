"""Multi-fidelity hyperparameter tuning over one stream (Optuna underneath).

A study's trials are ordinary jobs over the same topic (each its own consumer group), so
everything the runtime promises holds per trial. At rungs of ``records_applied`` (R, R·η,
R·η², …) a trial's score on the validation data is reported to Optuna; its pruner's
decision *pauses* the losers (``job pause``: resumable later, offsets kept) and lets the
winners go on. ``study.py``: create / status / best / resume; ``space.py``: the search
space; ``scoring.py``: the score of a trial at a rung; ``pool.py``: ``worker --study``.
"""
