"""The post-hoc stage's building blocks: a finished run's weights, averaged with any EMA width and sampled with
any sampler, scored without retraining (docs/search.md). Free of Ray, Optuna and MLflow.

    from spd_tune.posthoc import PosthocPoint, evaluate_point
"""

from .evaluate import PosthocPoint, averaged_weights, evaluate_point

__all__ = ["PosthocPoint", "averaged_weights", "evaluate_point"]
