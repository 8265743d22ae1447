"""Side by side: one model and cluster under several algorithms (``memplan compare``, POST /v1/compare), each
run's memory report with its estimated step time and its speed relative to PPO. Every answer is
``memplan.estimate`` plus ``memplan.step_time``; nothing here searches (the planner does)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from memplan.errors import InputError
from memplan.estimator import estimate
from memplan.estimator.consistency import for_algorithm
from memplan.frameworks.presets import ALGOS as FRAMEWORK_ALGOS
from memplan.report import EstimateRequest, Report, Verdict
from memplan.timing import StepTime, step_time

DEFAULT_ALGOS = ("ppo", "grpo", "remax", "rloo", "dpo")
"""What ``memplan compare`` and POST /v1/compare (``base`` without ``algos``) compare unless told: under a
``framework``, those of them the framework runs (``compared_algos``)."""

SPEED_VS_PPO = ("PPO's estimated seconds per prompt (DPO/SFT: sample) ÷ this run's, same model, GPUs and knobs: "
                "2.0 is twice as fast as PPO, 0.5 half as fast; None when either has no time estimate")


class CompareRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    algo: str
    fits: bool = Field(description="The report's point-estimate verdict (Report.fits)")
    verdict: Verdict | None = Field(None, description="The report's verdict with memplan's error band; None when "
                                    "the algorithm cannot run")
    reasons: list[str] = Field(default_factory=list, description="Why it does not fit (the report's reasons)")
    peak_bytes_per_gpu: int | None = None
    headroom_bytes: int | None = None
    peak_phase: str | None = None
    roles: list[str] = Field(default_factory=list, description="Resident models ('reference=actor': shared base)")
    host_bytes_per_node: int | None = None
    saving_vs_ppo_bytes: int | None = None
    saving_vs_ppo_pct: float | None = None
    seconds_per_step: float | None = Field(None, description="Estimated seconds per step (memplan.step_time); None "
                                           "when the time model cannot run it")
    prompts_per_step: int | None = Field(None, description="Prompts (DPO/SFT: samples) one step consumes")
    speed_vs_ppo: float | None = Field(None, description=SPEED_VS_PPO)
    error: str | None = Field(None, description="Why this algorithm cannot run with these knobs")


class CompareReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    request: EstimateRequest
    rows: list[CompareRow]
    ppo_peak_bytes_per_gpu: int | None = None
    ppo_seconds_per_step: float | None = Field(None, description="PPO's estimated seconds per step, same knobs")


class ComparedReport(Report):
    """One run of ``compare_reports``: its memory report, its estimated step time and its speed relative to PPO
    with the same model, GPUs and knobs (POST /v1/compare, ``memplan compare --json``)."""

    step_time: StepTime | None = Field(None, description="memplan.step_time of the same request; None when the "
                                       "time model cannot run it (e.g. no performance figures for the GPU)")
    speed_vs_ppo: float | None = Field(None, description=SPEED_VS_PPO)

def compared_algos(request: EstimateRequest, algos: list[str] | tuple[str, ...] | None,
                   field: str = "algos") -> tuple[list[str], list[str]]:
    """The algorithms to compare for ``request`` and a note when the default list was cut: ``algos`` as given
    (each once), else ``DEFAULT_ALGOS`` — under a ``framework``, only those its preset covers
    (``memplan.frameworks.presets.ALGOS``: verl has no DPO, TRL no PPO or ReMax). An algorithm given that the
    framework does not run is an ``InputError`` naming ``field``."""
    runs = FRAMEWORK_ALGOS.get(request.framework) if request.framework is not None else None
    if algos is None:
        names = [a for a in DEFAULT_ALGOS if runs is None or a in runs]
        left = [a for a in DEFAULT_ALGOS if a not in names]
        if not left:
            return names, []
        return names, [f"framework {request.framework} runs {', '.join(runs or ())}: compared {', '.join(names)} "
                       f"({', '.join(left)} left out of the default list)"]
    names = list(dict.fromkeys(algos))
    bad = [a for a in names if runs is not None and a not in runs]
    if bad:
        raise InputError(field, f"framework {request.framework} runs {', '.join(runs or ())}; {bad[0]!r} is not one "
                         "(drop it, or compare without the framework preset)", bad[0])
    return names, []


def ppo_of(request: EstimateRequest) -> EstimateRequest | None:
    """``request`` under PPO, the comparison's baseline; None when its framework does not run PPO (TRL)."""
    return for_algorithm(request, "ppo") if _runs_ppo(request) else None


def _runs_ppo(request: EstimateRequest) -> bool:
    return request.framework is None or "ppo" in FRAMEWORK_ALGOS.get(request.framework, ("ppo",))


def timed(request: EstimateRequest, dataset_samples: int | None = None) -> StepTime | None:
    """``step_time`` of a request that estimates, or None where the time model cannot run it (a GPU without
    performance figures)."""
    try:
        return step_time(request, dataset_samples=dataset_samples)
    except InputError:
        return None


def speed_ratio(ppo: StepTime | None, run: StepTime | None) -> float | None:
    """PPO's seconds per prompt ÷ ``run``'s (``SPEED_VS_PPO``): per prompt, since a step of GRPO or RLOO
    generates a group per prompt and a step of DPO trains pairs."""
    if ppo is None or run is None or not run.seconds_per_step or not ppo.prompts_per_step:
        return None
    return (ppo.seconds_per_step / ppo.prompts_per_step) / (run.seconds_per_step / run.prompts_per_step)


def compare_algorithms(request: EstimateRequest, algos=DEFAULT_ALGOS) -> CompareReport:
    """The same model, cluster and knobs under each algorithm: peak per GPU, resident models, the phase that
    sets the peak, the saving relative to PPO (estimated even when not listed), and the estimated seconds per
    step and speed relative to PPO (``memplan.step_time``, ~0.3 ms a call)."""
    reports: dict[str, Report | str] = {}
    times: dict[str, StepTime | None] = {}
    for algo in dict.fromkeys((*(("ppo",) if _runs_ppo(request) else ()), *algos)):  # TRL has no PPO baseline
        try:
            reports[algo] = estimate(for_algorithm(request, algo))
        except InputError as err:
            reports[algo] = str(err)
            continue
        times[algo] = timed(reports[algo].request)
    ppo = reports.get("ppo")
    ppo_peak = ppo.peak_bytes_per_gpu if isinstance(ppo, Report) else None
    ppo_time = times.get("ppo")
    rows = []
    for algo in algos:
        r = reports[algo]
        if not isinstance(r, Report):
            rows.append(CompareRow(algo=algo, fits=False, error=r))
            continue
        saving = ppo_peak - r.peak_bytes_per_gpu if ppo_peak is not None else None
        t = times[algo]
        rows.append(CompareRow(
            algo=algo, fits=r.fits, verdict=r.verdict, reasons=list(r.reasons),
            peak_bytes_per_gpu=r.peak_bytes_per_gpu,
            headroom_bytes=r.headroom_bytes,
            peak_phase=r.peak_phase, host_bytes_per_node=r.host_bytes_per_node,
            roles=[m.role + (f"={m.shares_weights_with}" if m.shares_weights_with else "") for m in r.models],
            saving_vs_ppo_bytes=saving,
            saving_vs_ppo_pct=round(100 * saving / ppo_peak, 2) if saving is not None else None,
            seconds_per_step=None if t is None else t.seconds_per_step,
            prompts_per_step=None if t is None else t.prompts_per_step,
            speed_vs_ppo=speed_ratio(ppo_time, t),
        ))
    return CompareReport(request=request, rows=rows, ppo_peak_bytes_per_gpu=ppo_peak,
                         ppo_seconds_per_step=None if ppo_time is None else ppo_time.seconds_per_step)


def compare_reports(requests: list[EstimateRequest], ppo: EstimateRequest | None = None) -> list[ComparedReport]:
    """``memplan.compare`` (one memory report per request, in order), each with its ``step_time`` and its speed
    relative to PPO: ``ppo`` when given (``memplan compare`` and POST /v1/compare's ``base``: the base request
    under PPO, as ``compare_algorithms``), else PPO with each request's own knobs (``for_algorithm(request,
    'ppo')``), timed once per distinct request. Raises ``InputError`` for a request that does not estimate, as
    ``memplan.compare``."""
    reports = [estimate(r) for r in requests]
    ppo_times: dict[EstimateRequest, StepTime | None] = {}
    out = []
    for report in reports:
        t = timed(report.request)
        ppo_request = ppo or (ppo_of(report.request) if report.request.algo != "ppo" else report.request)
        if ppo_request is not None and ppo_request not in ppo_times:
            ppo_times[ppo_request] = t if ppo_request == report.request else timed(ppo_request)
        ppo_time = None if ppo_request is None else ppo_times[ppo_request]
        out.append(ComparedReport(**dict(report), step_time=t, speed_vs_ppo=speed_ratio(ppo_time, t)))
    return out


__all__ = [
    "DEFAULT_ALGOS",
    "SPEED_VS_PPO",
    "CompareReport",
    "CompareRow",
    "ComparedReport",
    "compare_algorithms",
    "compare_reports",
    "compared_algos",
    "ppo_of",
    "speed_ratio",
    "timed",
]
