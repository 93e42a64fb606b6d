"""The search service: the space schema, its plan, Ray Tune with Optuna and ASHA, what it concludes (ranking,
summary), the champion, MLflow tracking and ``python -m spd_tune.search``."""
