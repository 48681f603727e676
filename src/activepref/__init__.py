"""activepref: build LLM preference datasets with active learning.

The public surface is small: the data records, the run config, the acquisition
registry and the loop entry points. Everything else lives in modules named after
what they hold (see the README's tour).
"""

from activepref.errors import ActivePrefError, ConfigError, JudgeError, PoolFormatError, RunLockedError

__version__ = "0.1.0"

__all__ = [
    "ActivePrefError",
    "ConfigError",
    "JudgeError",
    "PoolFormatError",
    "RunLockedError",
    "__version__",
]
