"""memplan: will this RL fine-tuning run fit on these GPUs, where does the memory go, what change makes it fit.

``import memplan`` is light: pydantic only. torch is imported by ``memplan.harness`` alone, when tracing or
measuring; typer and rich by the CLI; FastAPI by ``api``.
"""

from memplan.errors import EnvironmentProblem, InputError, MemplanError, UnknownGPUError, UnknownModelError
from memplan.estimator import compare, estimate
from memplan.report import ArchConfig, Breakdown, EstimateRequest, LineItem, ModelReport, PhaseReport, Report
from memplan.timing import StepTime, step_time

__version__ = "0.1.0"

__all__ = [
    "ArchConfig",
    "Breakdown",
    "EnvironmentProblem",
    "EstimateRequest",
    "InputError",
    "LineItem",
    "MemplanError",
    "ModelReport",
    "PhaseReport",
    "Report",
    "StepTime",
    "UnknownGPUError",
    "UnknownModelError",
    "compare",
    "estimate",
    "step_time",
]
