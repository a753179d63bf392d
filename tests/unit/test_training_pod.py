"""The GPU training pod template is a valid Kubernetes pod spec with the fields that matter."""

from kubernetes.client import ApiClient, V1PodSpec

from cellrep_assets.training import GpuPodSettings, TrainingLauncher, training_pod_spec


class _Response:
    def __init__(self, data):
        import json

        self.data = json.dumps(data)


def _as_model(spec: dict) -> V1PodSpec:
    # The official client's own deserializer: unknown or mistyped fields fail here.
    return ApiClient().deserialize(_Response(spec), "V1PodSpec")


def test_gpu_pod_spec_is_valid_and_complete():
    spec = training_pod_spec(GpuPodSettings(image="cellrep-train:1", gpus=2,
                                            env_from_secrets=("mlflow-credentials",),
                                            data_volume_claim="cellrep-data"))
    pod = _as_model(spec)
    container = pod.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "2"
    assert container.resources.requests["cpu"] and container.resources.requests["memory"]
    assert container.security_context.run_as_non_root is True
    assert container.security_context.allow_privilege_escalation is False
    assert pod.security_context.run_as_non_root is True
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert pod.tolerations[0].key == "nvidia.com/gpu" and pod.tolerations[0].effect == "NoSchedule"
    assert pod.restart_policy == "Never"
    assert container.env_from[0].secret_ref.name == "mlflow-credentials"
    assert pod.volumes[0].persistent_volume_claim.claim_name == "cellrep-data"
    # No secret values anywhere in the spec: only references by name.
    assert "password" not in str(spec).lower() and "token" not in str(spec).lower()


def test_cpu_pod_has_no_gpu_scheduling():
    pod = _as_model(training_pod_spec(GpuPodSettings(image="x", gpus=0)))
    assert "nvidia.com/gpu" not in (pod.containers[0].resources.limits or {})
    assert pod.node_selector is None and pod.tolerations is None


def test_launcher_settings_bounded_wait():
    launcher = TrainingLauncher(backend="k8s", image="img", pod_wait_timeout_s=600)
    settings = launcher.pod_settings()
    assert settings.pod_wait_timeout_s == 600 and settings.image == "img"
