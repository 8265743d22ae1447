"""Launch files out: the configuration memplan estimated, written for the framework that runs it, and the
cluster resources to ask for.

``emit(request, target)``:

* ``'verl'`` — ``run_verl.sh``, ``python3 -m verl.trainer.main_ppo key=value ...`` (``memplan.emit.verl``);
* ``'trl'`` — ``recipe.yaml`` (GRPOConfig / RLOOConfig / DPOConfig / SFTConfig) and ``accelerate.yaml``
  (``memplan.emit.trl``);
* ``'openrlhf'`` — ``run_openrlhf.sh``, ``python3 -m openrlhf.cli.train_ppo_ray --flag ...``
  (``memplan.emit.openrlhf``);
* ``'ray'``, ``'skypilot'``, ``'kuberay'`` — a placement group's bundles, a SkyPilot ``resources`` block, a
  KubeRay worker group, from the request's report (``memplan.emit.resources``).

A launch file is read back by memplan's own reader before it is returned, and must give the run that was
estimated: a setting the framework cannot carry is an ``InputError`` naming the field, the framework and the value
it would run instead (``memplan.emit.common.check_round_trip``). Nothing here reads or writes files.
"""

from __future__ import annotations

from memplan.emit.common import Emitted, LaunchFile
from memplan.errors import InputError
from memplan.report import EstimateRequest

FRAMEWORKS = ("verl", "trl", "openrlhf")
RESOURCES = ("ray", "skypilot", "kuberay")
TARGETS = FRAMEWORKS + RESOURCES


def emit(request: EstimateRequest, target: str) -> Emitted:
    """The files of ``target`` for ``request`` (see the module docstring)."""
    import importlib

    name = target.strip().lower() if isinstance(target, str) else target
    if name in FRAMEWORKS:
        return importlib.import_module(f"memplan.emit.{name}").emit(request)
    if name in RESOURCES:
        from memplan import estimate
        from memplan.emit import resources

        return resources.emit(estimate(request), name)
    raise InputError("emit", f"unknown target {target!r}: one of {', '.join(TARGETS)}", target)


__all__ = ["FRAMEWORKS", "RESOURCES", "TARGETS", "Emitted", "LaunchFile", "emit"]
