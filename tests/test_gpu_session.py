"""benchmarks/gpu_session.py, the script a GPU session runs: its case list resolves and fits an 80 GB GPU by the
estimate, and a session's records come back as the CudaRecords ``memplan validate`` reads (no GPU here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_session  # noqa: E402

from memplan.harness.accuracy import CASES, request  # noqa: E402
from memplan.harness.records import CudaRecord, MeasuredPhase, records_from_cuda  # noqa: E402


def test_every_case_is_an_accuracy_case_and_fits_80gb():
    assert set(gpu_session.CASES) <= set(CASES)
    planned = gpu_session.planned(gpu_session.CASES)
    assert [case for case, _ in planned] == list(gpu_session.CASES)  # all fit: none silently dropped today
    assert all(peak <= gpu_session.CAPACITY_80GB for _, peak in planned)


def test_split_writes_records_validate_reads(tmp_path):
    req = request("grpo qwen2.5-0.5b")
    record = CudaRecord(request=req, peak_allocated_bytes=2**30, peak_reserved_bytes=2**31, peak_phase="rollout",
                        phases=[MeasuredPhase(phase="rollout", max_allocated_bytes=2**30, max_reserved_bytes=2**31)],
                        gpu_name="NVIDIA H100 80GB HBM3", gpu_total_bytes=85_031_714_816, driver="x", cuda="12.8",
                        torch_version="2.13.0", transformers_version="5.25.0", date="2026-12-08T00:00:00Z",
                        seconds=1.0)
    session = tmp_path / "cuda_records.jsonl"
    session.write_text(json.dumps({"case": "grpo qwen2.5-0.5b", "record": json.loads(record.model_dump_json())}) + "\n")
    assert gpu_session.main(["--split", str(session), "--out", str(tmp_path / "cuda")]) == 0
    written = tmp_path / "cuda" / "grpo_qwen2_5-0_5b.json"
    back = CudaRecord.model_validate_json(written.read_text())
    assert back == record
    points = records_from_cuda(back, f"benchmarks/results/cuda/{written.name}")
    assert [p.measured_bytes for p in points] == [2**30]
