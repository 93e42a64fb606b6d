"""Public import path kept for user code and README examples: the code lives in ``spd_tune.core.spectrum``."""

from .core.spectrum import *  # noqa: F401,F403
