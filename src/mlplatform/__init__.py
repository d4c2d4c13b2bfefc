"""mlplatform: experiment tracking and a guarded model registry for tabular ML."""

from mlplatform import privacy as _privacy

_privacy.apply()

__version__ = "0.1.0"
