"""The estimator against every committed CUDA record (benchmarks/results/cuda/*.json, ``memplan measure``).

A record is data, never edited by hand: the real run's ``torch.cuda.max_memory_allocated`` over the steps it
ran. The estimate of the record's request, net of ``fixed_bytes`` (the CUDA context and NCCL buffers are
outside the caching allocator; the cuBLAS workspace inside it is a few MiB), must be within ``TOLERANCE`` of
that peak — issue 3's goal for the estimator vs CUDA (max ≤ 8 %). Without records (no session has been lent a
GPU yet) the test skips, saying so; a skip is not a pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import memplan
from memplan.harness.records import CudaRecord

RECORDS = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cuda").glob("*.json"))
TOLERANCE = 0.08


def _params() -> list:
    if not RECORDS:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no CUDA records committed "
                                                                  "(benchmarks/results/cuda/ is empty)"))]
    return [pytest.param(p, id=p.stem) for p in RECORDS]


@pytest.mark.parametrize("path", _params())
def test_estimate_within_tolerance_of_measured(path: Path) -> None:
    record = CudaRecord.model_validate_json(path.read_text())
    est = memplan.estimate(record.request)
    net = est.peak_bytes_per_gpu - est.fixed_bytes
    error = (net - record.peak_allocated_bytes) / record.peak_allocated_bytes
    print(f"\n{path.name}: {record.gpu_name}, estimate {net / 2**30:.3f} GiB, measured "
          f"{record.peak_allocated_bytes / 2**30:.3f} GiB, error {error:+.2%}")
    assert abs(error) <= TOLERANCE, f"{path.name}: estimate {net} vs measured {record.peak_allocated_bytes}"
