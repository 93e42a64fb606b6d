"""Replaying search policies on recorded learning curves, in simulated time: ``python -m spd_tune.replay``
(record a table, convert a finished search into one, compare stopping policies on it). docs/method.md has the
known-answer table's figures."""
