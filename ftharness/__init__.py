"""ftharness: make preemption of training jobs harmless.

Public API: the exit codes, the worker's view of the supervisor, and the
framework integrations in `ftharness.keras` (imported on demand, so the
supervisor never loads TensorFlow).
"""

from ftharness.config import WorkerEnvironment
from ftharness.exitcodes import ExitCode

__all__ = ["ExitCode", "WorkerEnvironment", "__version__"]
__version__ = "0.1.0"
