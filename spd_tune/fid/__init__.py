"""FID with pytorch-fid's Inception network: weights, features, mergeable statistics, reference cache.

    from spd_tune.fid import FeatureSpec, InceptionFeatures, frechet_distance
"""

from ..errors import WeightsError
from .inception import FeatureSpec, InceptionFeatures, metric_name, random_inception_state_dict
from .reference import default_cache_dir, reference_stats, score, stats_key
from .stats import RunningStats, frechet_distance, merge_all
from .weights import FID_SHA256_PREFIX, FID_WEIGHTS_FILE, hub_cache_path, resolve_fid_weights

__all__ = [
    "FID_SHA256_PREFIX", "FID_WEIGHTS_FILE", "FeatureSpec", "InceptionFeatures", "RunningStats", "WeightsError",
    "default_cache_dir", "frechet_distance", "hub_cache_path", "merge_all", "metric_name",
    "random_inception_state_dict", "reference_stats", "resolve_fid_weights", "score", "stats_key",
]
