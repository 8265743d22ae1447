"""The cluster resources to ask a scheduler for, from a report: GPUs per node, nodes, host RAM per node and
/dev/shm, written as a Ray placement group's bundles, a SkyPilot task's ``resources`` and a KubeRay worker group.

The numbers (``Ask``):

* nodes, GPUs per node, GPU — the request's ``gpus`` (``memplan.catalog.parse_cluster``).
* host RAM per node — ``Report.host_bytes_per_node`` (what memplan counts in host RAM: CPU offload of the trained
  roles' optimizer states and weights, idle offload between their steps; a sleeping vLLM at level 2, verl's and
  TRL's, keeps nothing there) plus /dev/shm, whose tmpfs pages are host RAM (Kubernetes counts a memory-backed
  emptyDir against the container's memory), rounded up to whole GiB. It does not count what the processes,
  the data loader and loading the checkpoint take: memplan does not estimate them.
* /dev/shm — 1 GiB: NCCL keeps its intra-node buffers in /dev/shm and its user guide asks containers for
  ``--shm-size=1g`` (NCCL User Guide, Troubleshooting → Shared memory). Ray puts its object store there too, at 30 %
  of the node's memory by default (Ray docs, Memory Management); KubeRay sizes the /dev/shm it mounts to the
  container's memory request (ray-operator ``pod.go::makeEmptyDirVolume``), which covers it.

The formats:

* Ray: ``ray.util.placement_group(bundles, strategy)`` — one bundle per GPU, ``{"GPU": 1, "CPU": 1}`` as verl's
  and OpenRLHF's resource pools make them, with ``"memory"`` (bytes, Ray's logical resource) the host RAM per GPU
  when memplan counts any; ``STRICT_PACK`` on one node, ``PACK`` over several
  (https://docs.ray.io/en/latest/ray-core/scheduling/placement-group.html).
* SkyPilot: ``num_nodes`` and ``resources.accelerators`` ('H100:8'), ``resources.memory`` ('N+': at least N GB per
  node, sky/resources.py reading GB as 2^30 bytes) (https://docs.skypilot.co/en/latest/reference/yaml-spec.html).
* KubeRay: one ``workerGroupSpecs`` entry of a ``RayCluster`` (ray.io/v1): ``replicas`` = nodes, the container's
  ``nvidia.com/gpu`` (``amd.com/gpu``) and ``memory`` limits and requests, /dev/shm an ``emptyDir`` of medium
  ``Memory`` (https://docs.ray.io/en/latest/cluster/kubernetes/user-guides/config.html).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from memplan.emit.common import Emitted, LaunchFile, cluster_of, yaml_text
from memplan.errors import InputError
from memplan.report import Report
from memplan.units import GiB

SHM_BYTES = 1 * GiB
"""/dev/shm per node: NCCL User Guide, Troubleshooting → Shared memory (``--shm-size=1g``)."""
SKYPILOT_NAMES = {  # memplan's GPU → SkyPilot's accelerator name (`sky show-gpus`, docs.skypilot.co compute/gpus)
    "A100-40GB": "A100", "A100-80GB": "A100-80GB", "H100-80GB": "H100", "H200": "H200", "L4": "L4", "L40S": "L40S",
    "A10G": "A10G", "T4": "T4", "V100-16GB": "V100", "V100-32GB": "V100-32GB", "A6000": "A6000",
}
TARGETS = ("ray", "skypilot", "kuberay")


@dataclass(frozen=True, kw_only=True, slots=True)
class Ask:
    """What one run asks of the scheduler."""

    nodes: int
    gpus_per_node: int
    gpu: str
    """memplan's GPU name."""
    vendor: str
    host_bytes_per_node: int
    """``Report.host_bytes_per_node``: host RAM memplan counts."""
    shm_bytes: int
    """/dev/shm per node."""

    @property
    def memory_bytes_per_node(self) -> int:
        """Host RAM to ask per node: memplan's count and /dev/shm, rounded up to whole GiB."""
        return -(-(self.host_bytes_per_node + self.shm_bytes) // GiB) * GiB


def ask(report: Report) -> Ask:
    from memplan.catalog import get_gpu

    nodes, per_node, gpu = cluster_of(report.request)
    return Ask(nodes=nodes, gpus_per_node=per_node, gpu=gpu, vendor=get_gpu(gpu).vendor,
               host_bytes_per_node=report.host_bytes_per_node, shm_bytes=SHM_BYTES)


def ray_placement_group(a: Ask) -> dict:
    """``placement_group``'s arguments: a bundle per GPU."""
    bundle: dict[str, int] = {"GPU": 1, "CPU": 1}
    per_gpu = -(-a.host_bytes_per_node // a.gpus_per_node)
    if per_gpu:
        bundle["memory"] = per_gpu
    return {"bundles": [dict(bundle) for _ in range(a.nodes * a.gpus_per_node)],
            "strategy": "STRICT_PACK" if a.nodes == 1 else "PACK"}


def skypilot(a: Ask) -> dict:
    """A SkyPilot task's ``num_nodes`` and ``resources``."""
    name = SKYPILOT_NAMES.get(a.gpu)
    if name is None:
        raise InputError("gpus", f"memplan knows no SkyPilot accelerator name for {a.gpu}: one of "
                         f"{', '.join(SKYPILOT_NAMES)}", a.gpu)
    return {"num_nodes": a.nodes,
            "resources": {"accelerators": f"{name}:{a.gpus_per_node}",
                          "memory": f"{a.memory_bytes_per_node // GiB}+"}}


def kuberay_worker_group(a: Ask) -> dict:
    """One ``workerGroupSpecs`` entry: a pod per node."""
    gpu_key = "amd.com/gpu" if a.vendor == "amd" else "nvidia.com/gpu"
    limits = {gpu_key: a.gpus_per_node, "memory": f"{a.memory_bytes_per_node // GiB}Gi"}
    return {
        "groupName": "gpu-workers",
        "replicas": a.nodes, "minReplicas": a.nodes, "maxReplicas": a.nodes,
        "rayStartParams": {},
        "template": {"spec": {
            "containers": [{
                "name": "ray-worker",
                "image": "rayproject/ray:latest-gpu",
                "resources": {"limits": dict(limits), "requests": dict(limits)},
                "volumeMounts": [{"name": "shared-mem", "mountPath": "/dev/shm"}],
            }],
            "volumes": [{"name": "shared-mem", "emptyDir": {"medium": "Memory",
                                                            "sizeLimit": f"{a.shm_bytes // GiB}Gi"}}],
        }},
    }


def emit(report: Report, target: str) -> Emitted:
    """The resource spec ``target`` ('ray', 'skypilot', 'kuberay') for ``report``'s run."""
    a = ask(report)
    source = (f"{a.nodes} node(s) × {a.gpus_per_node} {a.gpu}; host RAM per node {a.memory_bytes_per_node // GiB} "
              f"GiB = memplan's host_bytes_per_node {a.host_bytes_per_node / GiB:.2f} GiB + /dev/shm "
              f"{a.shm_bytes // GiB} GiB, rounded up")
    notes = ("host RAM: memplan counts CPU and idle offload; add what your processes, data loader and checkpoint "
             "loading take",)
    if report.request.rollout_engine == "remote":
        notes += ("rollout_engine 'remote': the inference server's GPUs are not in this request",)
    if target == "ray":
        text = json.dumps(ray_placement_group(a), indent=2) + "\n"
        return Emitted(target=target, files=(LaunchFile(name="placement_group.json", text=text),),
                       read_back=f"ray.util.placement_group(**json.load(open('placement_group.json'))); {source}",
                       notes=notes)
    if target == "skypilot":
        text = f"# SkyPilot resources written by memplan: {source}\n" + yaml_text(skypilot(a))
        return Emitted(target=target, files=(LaunchFile(name="sky.yaml", text=text),), read_back=source, notes=notes)
    if target == "kuberay":
        text = (f"# a RayCluster's spec.workerGroupSpecs entry, written by memplan: {source}\n"
                + yaml_text([kuberay_worker_group(a)]))
        return Emitted(target=target, files=(LaunchFile(name="kuberay-workers.yaml", text=text),), read_back=source,
                       notes=notes + ("image: put your training image (verl / OpenRLHF and Ray) in place of "
                                      "rayproject/ray:latest-gpu",))
    raise InputError("target", f"unknown resource target {target!r}: one of {', '.join(TARGETS)}", target)
