"""Measurement harness (tiers 2 and 3): the same step recipes traced under fake tensors or run on CUDA.

Work in progress; see records.py for the result models.
"""

from memplan.harness.records import CudaRecord, MeasuredPhase, PhaseTrace, TraceReport

__all__ = ["CudaRecord", "MeasuredPhase", "PhaseTrace", "TraceReport"]
