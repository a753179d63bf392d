"""The GPU training pod template handed to ``PipesK8sClient`` as ``base_pod_spec``.

A plain dict in the Kubernetes API's camelCase, so it can be validated by the official
client's models (the tests do) and rendered to YAML for operators.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GpuPodSettings:
    """What an operator may change about the training pod; defaults suit one-GPU nodes."""

    image: str
    namespace: str = "cellrep"
    gpus: int = 1
    cpu_request: str = "4"
    memory_request: str = "24Gi"
    memory_limit: str = "48Gi"
    # GKE/EKS/NVIDIA GPU-operator nodes carry this label; pods must tolerate the GPU taint.
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: tuple[dict[str, str], ...] = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
    service_account: str | None = None
    # Credentials come from Kubernetes Secrets referenced by name, never from code.
    env_from_secrets: tuple[str, ...] = ()
    run_as_user: int = 1000
    pod_wait_timeout_s: float = 1800.0
    data_volume_claim: str | None = None
    data_mount_path: str = "/data"


def training_pod_spec(settings: GpuPodSettings) -> dict:
    """The pod spec (``V1PodSpec`` as a dict) of one GPU training run."""
    container: dict = {
        "name": "dagster-pipes-execution",  # the container name PipesK8sClient fills in
        "resources": {
            "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
            "limits": {"memory": settings.memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if settings.gpus > 0:
        gpus = str(settings.gpus)
        container["resources"]["limits"]["nvidia.com/gpu"] = gpus
        container["resources"]["requests"]["nvidia.com/gpu"] = gpus
    if settings.env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": name}} for name in settings.env_from_secrets]
    spec: dict = {
        "restartPolicy": "Never",
        "containers": [container],
        "securityContext": {"runAsNonRoot": True, "fsGroup": settings.run_as_user},
    }
    if settings.gpus > 0:
        spec["nodeSelector"] = dict(settings.node_selector)
        spec["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    if settings.data_volume_claim:
        spec["volumes"] = [{"name": "data",
                            "persistentVolumeClaim": {"claimName": settings.data_volume_claim}}]
        container["volumeMounts"] = [{"name": "data", "mountPath": settings.data_mount_path}]
    return spec
