"""The post-hoc stage's building blocks: a finished run's weights, averaged with any EMA width and sampled with
any sampler, scored without retraining (docs/search.md). Free of Ray, Optuna and MLflow.

    from spd_tune.posthoc import PosthocPoint, evaluate_point
"""

from .evaluate import PosthocPoint, RunFiles, averaged_weights, ema_of, evaluate_point, sampling_of

__all__ = ["PosthocPoint", "RunFiles", "averaged_weights", "ema_of", "evaluate_point", "sampling_of"]
