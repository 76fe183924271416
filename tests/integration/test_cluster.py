"""The local cluster behaves like a real one: real scheduler, controllers, kubelet-like runner.

Every test runs against the session's control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler built from Kubernetes 1.36) in its own namespace.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster.cluster import ClusterInfo
from localcluster.fleet import load_fleet
from localcluster.pytest_plugin import Kubectl
from localcluster.waiting import container_status, phase, until, wait_for_pod

Obj = dict[str, Any]
BUSYBOX = "localcluster/busybox"
PYTHON = "localcluster/python"
REPO = Path(__file__).resolve().parents[2]


def make_pod(name: str, command: list[str], image: str = BUSYBOX, **spec: Any) -> Obj:
    """A single-container pod with restartPolicy Never; extra keyword arguments go to spec."""
    container: Obj = {"name": "main", "image": image, "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **spec.pop("metadata", {})},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 10, "containers": [container], **spec},
    }


def finished(pod: Obj) -> bool:
    return phase(pod) in ("Succeeded", "Failed")


def terminated(pod: Obj) -> Obj:
    return dict(container_status(pod).get("state", {}).get("terminated") or {})


def test_fleet_nodes_are_listed_ready_with_gpu_labels(kubectl: Kubectl) -> None:
    out = kubectl("get", "nodes", "-L", "nvidia.com/gpu.product", "--no-headers").stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for node in load_fleet():
        assert node.name in rows, out
        assert rows[node.name][1] == "Ready", out
        if node.gpu:
            assert rows[node.name][-1] == node.gpu.product, out
    labels = json.loads(kubectl("get", "node", "gpu-a100-40gb-0", "-o", "json").stdout)
    assert labels["metadata"]["labels"]["nvidia.com/gpu.memory"] == "40960"
    assert labels["metadata"]["labels"]["nvidia.com/gpu.compute.major"] == "8"
    assert labels["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert not labels["spec"].get("taints")


def test_kubectl_is_the_environments_own(kubectl: Kubectl) -> None:
    assert kubectl.path == Path(sys.executable).parent / "kubectl"
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["clientVersion"]["minor"] == "36"
    assert version["serverVersion"]["gitVersion"] == "v1.36.3"


def test_gpu_pod_is_scheduled_on_the_t4_and_succeeds(
    k8s_api: client.ApiClient, namespace: str, local_cluster: ClusterInfo, kubectl: Kubectl
) -> None:
    pod = make_pod(
        "t4",
        ["sh", "-c", "echo hello from $(hostname) on $NODE"],
        nodeSelector={"nvidia.com/gpu.product": "Tesla-T4"},
        container={
            "resources": {"limits": {"nvidia.com/gpu": "1"}},
            "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        },
    )
    created = client.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod)
    done = wait_for_pod(k8s_api, namespace, "t4", finished)
    assert done["spec"]["nodeName"] == "gpu-t4-0"
    assert phase(done) == "Succeeded"
    assert terminated(done)["exitCode"] == 0
    assert terminated(done)["reason"] == "Completed"
    conditions = {c["type"]: c for c in done["status"]["conditions"]}
    assert conditions["PodScheduled"]["status"] == "True"
    assert conditions["Initialized"]["status"] == "True"
    assert conditions["Ready"]["reason"] == "PodCompleted"
    log = local_cluster.state_dir / "pods" / f"{namespace}_t4_{created.metadata.uid}" / "main.log"
    assert log.read_text().strip() == "hello from t4 on gpu-t4-0"
    assert kubectl("logs", "-n", namespace, "t4").stdout == "hello from t4 on gpu-t4-0\n"


def test_kubectl_logs_follows_a_running_container(k8s_api: client.ApiClient, namespace: str, kubectl: Kubectl) -> None:
    pod = make_pod("counter", ["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.3; done"])
    client.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod)
    wait_for_pod(k8s_api, namespace, "counter", lambda p: phase(p) in ("Running", "Succeeded", "Failed"))
    followed = kubectl("logs", "-f", "-n", namespace, "counter").stdout
    assert followed == "line 1\nline 2\nline 3\n"
    assert kubectl("logs", "--tail=1", "-n", namespace, "counter").stdout == "line 3\n"


def test_failing_pod_reports_exit_code_and_termination_message(k8s_api: client.ApiClient, namespace: str) -> None:
    pod = make_pod("fails", ["sh", "-c", 'printf "bad input on line 7" > /dev/termination-log; exit 3'])
    client.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod)
    done = wait_for_pod(k8s_api, namespace, "fails", finished)
    assert phase(done) == "Failed"
    t = terminated(done)
    assert (t["exitCode"], t["reason"], t["message"]) == (3, "Error", "bad input on line 7")


def test_custom_termination_message_path_and_fallback_to_logs(k8s_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(namespace, make_pod(
        "custom-path", ["sh", "-c", "echo done > /tmp/fto-msg/term; exit 0"],
        container={"terminationMessagePath": "/tmp/fto-msg/term"}))
    core.create_namespaced_pod(namespace, make_pod(
        "fallback", ["sh", "-c", "echo some log line; exit 5"],
        container={"terminationMessagePolicy": "FallbackToLogsOnError"}))
    assert terminated(wait_for_pod(k8s_api, namespace, "custom-path", finished))["message"] == "done\n"
    t = terminated(wait_for_pod(k8s_api, namespace, "fallback", finished))
    assert t["exitCode"] == 5 and "some log line" in t["message"]


def test_in_cluster_client_lists_pods_with_its_service_account_token(k8s_api: client.ApiClient, namespace: str) -> None:
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    })
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "pod-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}],
    })
    script = """
import base64, json, os
from kubernetes import client, config
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
ns = open(f"{sa}/namespace").read()
token = open(f"{sa}/token").read()
claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
config.load_incluster_config()
pods = client.CoreV1Api().list_namespaced_pod(ns).items
result = {"namespace": ns, "pods": [p.metadata.name for p in pods],
          "boundPod": claims["kubernetes.io"]["pod"]["name"], "ca": os.path.getsize(f"{sa}/ca.crt") > 0}
open("/dev/termination-log", "w").write(json.dumps(result))
"""
    client.CoreV1Api(k8s_api).create_namespaced_pod(namespace, make_pod("incluster", ["python", "-c", script], image=PYTHON))
    done = wait_for_pod(k8s_api, namespace, "incluster", finished)
    assert phase(done) == "Succeeded", container_status(done)
    result = json.loads(terminated(done)["message"])
    assert result == {"namespace": namespace, "pods": ["incluster"], "boundPod": "incluster", "ca": True}


def test_automount_disabled_means_no_token(k8s_api: client.ApiClient, namespace: str) -> None:
    pod = make_pod("no-token", ["sh", "-c", "test ! -e /var/run/secrets/kubernetes.io/serviceaccount/token"],
                   automountServiceAccountToken=False)
    client.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod)
    assert phase(wait_for_pod(k8s_api, namespace, "no-token", finished)) == "Succeeded"


# Records the signal in the termination message (and a file), then exits like a trainer that
# checkpointed on SIGTERM (exit 13 in docs/contract.md).
SIGNAL_SCRIPT = """
import signal, sys, time
def on_term(signum, frame):
    open("/dev/termination-log", "w").write(signal.Signals(signum).name)
    open("/signals/got", "w").write(signal.Signals(signum).name)
    sys.exit(13)
signal.signal(signal.SIGTERM, on_term)
open("/signals/started", "w").write("yes")
while True:
    time.sleep(0.1)
"""


def signal_pod(name: str, host_dir: Path) -> Obj:
    return make_pod(
        name, ["python", "-c", SIGNAL_SCRIPT], image=PYTHON,
        metadata={"finalizers": ["localcluster.finetune.dev/test-hold"]},
        volumes=[{"name": "signals", "hostPath": {"path": str(host_dir), "type": "DirectoryOrCreate"}}],
        container={"volumeMounts": [{"name": "signals", "mountPath": "/signals"}]},
    )


def release(core: client.CoreV1Api, namespace: str, name: str) -> None:
    core.patch_namespaced_pod(name, namespace, {"metadata": {"finalizers": None}})


def test_deleting_a_running_pod_sends_sigterm(k8s_api: client.ApiClient, namespace: str, tmp_path: Path) -> None:
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(namespace, signal_pod("deleted", tmp_path))
    wait_for_pod(k8s_api, namespace, "deleted", lambda p: phase(p) == "Running")
    until(lambda: (tmp_path / "started").exists(), 30, "process started")
    core.delete_namespaced_pod("deleted", namespace)
    done = wait_for_pod(k8s_api, namespace, "deleted", finished)
    assert (tmp_path / "got").read_text() == "SIGTERM"
    t = terminated(done)
    assert (t["exitCode"], t["message"]) == (13, "SIGTERM")
    assert phase(done) == "Failed"
    release(core, namespace, "deleted")
    wait_for_pod(k8s_api, namespace, "deleted", lambda p: not p)


def test_eviction_sends_sigterm_and_leaves_disruption_target(
    k8s_api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(namespace, signal_pod("evicted", tmp_path))
    wait_for_pod(k8s_api, namespace, "evicted", lambda p: phase(p) == "Running")
    until(lambda: (tmp_path / "started").exists(), 30, "process started")
    core.create_namespaced_pod_eviction("evicted", namespace, {
        "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "evicted", "namespace": namespace}})
    done = wait_for_pod(k8s_api, namespace, "evicted", finished)
    assert (tmp_path / "got").read_text() == "SIGTERM"
    assert terminated(done)["message"] == "SIGTERM"
    disruption = [c for c in done["status"]["conditions"] if c["type"] == "DisruptionTarget"]
    assert disruption and disruption[0]["status"] == "True", done["status"]["conditions"]
    assert disruption[0]["reason"] == "EvictionByEvictionAPI"
    release(core, namespace, "evicted")


def test_sigterm_ignored_means_sigkill_after_the_grace_period(
    k8s_api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(k8s_api)
    script = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "open('/signals/started', 'w').write('ignoring')\ntime.sleep(300)")
    pod = make_pod("stubborn", ["python", "-c", script], image=PYTHON, terminationGracePeriodSeconds=1,
                   metadata={"finalizers": ["localcluster.finetune.dev/test-hold"]},
                   volumes=[{"name": "signals", "hostPath": {"path": str(tmp_path)}}],
                   container={"volumeMounts": [{"name": "signals", "mountPath": "/signals"}]})
    core.create_namespaced_pod(namespace, pod)
    until(lambda: (tmp_path / "started").exists(), 30, "SIGTERM ignored")
    core.delete_namespaced_pod("stubborn", namespace)
    done = wait_for_pod(k8s_api, namespace, "stubborn", finished, timeout=30)
    t = terminated(done)
    assert (t["exitCode"], t["reason"]) == (137, "Error")
    release(core, namespace, "stubborn")


def test_init_container_runs_first_and_shares_an_empty_dir(k8s_api: client.ApiClient, namespace: str) -> None:
    pod = make_pod("with-init", ["sh", "-c", "cat /work/prepared > /dev/termination-log"],
                   initContainers=[{"name": "prepare", "image": BUSYBOX,
                                    "command": ["sh", "-c", "echo from-init > /work/prepared"],
                                    "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
                   volumes=[{"name": "work", "emptyDir": {}}],
                   container={"volumeMounts": [{"name": "work", "mountPath": "/work"}]})
    client.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod)
    done = wait_for_pod(k8s_api, namespace, "with-init", finished)
    assert phase(done) == "Succeeded"
    assert terminated(done)["message"] == "from-init\n"
    init = done["status"]["initContainerStatuses"][0]["state"]["terminated"]
    assert (init["exitCode"], init["reason"]) == (0, "Completed")


def test_pod_over_its_memory_limit_is_oomkilled(k8s_api: client.ApiClient, namespace: str) -> None:
    script = "import time\nblob = b'x' * (400 << 20)\ntime.sleep(60)"
    pod = make_pod("hog", ["python", "-c", script], image=PYTHON,
                   container={"resources": {"limits": {"memory": "128Mi"}}})
    client.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod)
    done = wait_for_pod(k8s_api, namespace, "hog", finished)
    assert phase(done) == "Failed"
    t = terminated(done)
    assert (t["reason"], t["exitCode"]) == ("OOMKilled", 137)


def test_processes_left_behind_die_with_the_container(k8s_api: client.ApiClient, namespace: str) -> None:
    marker = f"{namespace}-leftover"
    pod = make_pod("leaves-child", ["sh", "-c", f'python3 -c "import time; time.sleep(300)" {marker} & exit 0'])
    client.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod)
    assert phase(wait_for_pod(k8s_api, namespace, "leaves-child", finished)) == "Succeeded"

    def survivors() -> list[str]:
        out = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if marker.encode() in cmdline.read_bytes():
                    out.append(cmdline.parent.name)
            except OSError:
                pass
        return out

    until(lambda: not survivors(), 10, "no process of the finished container left")


def test_command_not_found_is_a_start_error(k8s_api: client.ApiClient, namespace: str) -> None:
    client.CoreV1Api(k8s_api).create_namespaced_pod(namespace, make_pod("nocmd", ["no-such-command-here"]))
    done = wait_for_pod(k8s_api, namespace, "nocmd", finished)
    t = terminated(done)
    assert phase(done) == "Failed"
    assert (t["reason"], t["exitCode"]) == ("StartError", 127)
    assert "no-such-command-here" in t["message"]


def test_unknown_image_reports_image_pull_failure(k8s_api: client.ApiClient, namespace: str) -> None:
    client.CoreV1Api(k8s_api).create_namespaced_pod(namespace, make_pod("noimage", ["true"], image="example.com/nope:1"))

    def waiting(p: Obj) -> bool:
        w = container_status(p).get("state", {}).get("waiting") or {}
        return w.get("reason") in ("ErrImagePull", "ImagePullBackOff")

    pod = wait_for_pod(k8s_api, namespace, "noimage", waiting)
    assert phase(pod) == "Pending"
    assert "example.com/nope:1" in container_status(pod)["state"]["waiting"]["message"]


def test_configmap_secret_and_env_value_from(k8s_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cfg"}, "data": {"train.yaml": "lr: '1e-4'\n", "MODE": "fast"}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"},
                                              "data": {"key": base64.b64encode(b"s3cr3t").decode()}})
    script = r"""
import json, os
out = {k: os.environ.get(k) for k in ("FROM_CM", "FROM_SECRET", "POD", "NS", "UID", "NODE", "PODIP", "MODE", "GREETING",
                                       "KUBERNETES_SERVICE_HOST", "MEM")}
out["train"] = open("/etc/finetune/train.yaml").read()
out["secret"] = open("/etc/creds/key").read()
out["cwd"] = os.getcwd()
out["scratch_tmpfs"] = any(l.split()[1] == "/scratch" and l.split()[2] == "tmpfs" for l in open("/proc/mounts"))
open("/dev/termination-log", "w").write(json.dumps(out))
"""
    env = [
        {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "PODIP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        {"name": "GREETING", "value": "pod $(POD)"},
    ]
    pod = make_pod(
        "wired", ["python", "-c", script], image=PYTHON,
        volumes=[
            {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "train.yaml", "path": "train.yaml"}]}},
            {"name": "creds", "secret": {"secretName": "creds"}},
            {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        ],
        container={
            "env": env,
            "envFrom": [{"configMapRef": {"name": "cfg"}}],
            "workingDir": "/scratch",
            "resources": {"limits": {"memory": "512Mi"}},
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/finetune", "readOnly": True},
                {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
                {"name": "scratch", "mountPath": "/scratch"},
            ],
        },
    )
    created = core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(k8s_api, namespace, "wired", finished)
    assert phase(done) == "Succeeded", container_status(done)
    out = json.loads(terminated(done)["message"])
    assert out == {
        "FROM_CM": "fast", "FROM_SECRET": "s3cr3t", "POD": "wired", "NS": namespace,
        "UID": created.metadata.uid, "NODE": done["spec"]["nodeName"], "PODIP": "127.0.0.1",
        "MODE": "fast", "GREETING": "pod wired", "KUBERNETES_SERVICE_HOST": "127.0.0.1", "MEM": "512",
        "train": "lr: '1e-4'\n", "secret": "s3cr3t", "cwd": "/scratch", "scratch_tmpfs": True,
    }


def test_trainer_image_layout_with_tmp_emptydir(k8s_api: client.ApiClient, namespace: str) -> None:
    """The trainer Job's shape: image ENV, an emptyDir over /tmp, its config under /etc/finetune."""
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "job-trainer-config"}, "data": {"train.yaml": "x: 1\n"}})
    script = ('{ command -v finetune-trainer; echo "$HF_HOME"; ls -A /tmp | wc -l; cat /etc/finetune/train.yaml; }'
              " > /dev/termination-log; touch /tmp/only-in-the-pod")
    pod = make_pod(
        "trainer-shape", ["sh", "-c", script], image="ghcr.io/finetune-operator/trainer:0.1.0",
        volumes=[{"name": "tmp", "emptyDir": {}},
                 {"name": "config", "configMap": {"name": "job-trainer-config"}}],
        container={"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                    {"name": "config", "mountPath": "/etc/finetune", "readOnly": True}]},
    )
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(k8s_api, namespace, "trainer-shape", finished)
    assert phase(done) == "Succeeded", container_status(done)
    # The emptyDir is empty, except for the stand-in image's own files when the checkout (and so
    # the environment) lives under /tmp, as in CI's fresh clone: those stay visible.
    image_under_tmp = REPO.resolve().is_relative_to("/tmp")
    assert terminated(done)["message"].split("\n") == [
        str(Path(sys.executable).parent / "finetune-trainer"), "/tmp/hf", "1" if image_under_tmp else "0", "x: 1", ""]
    assert not Path("/tmp/only-in-the-pod").exists()


def test_a_volume_over_the_checkouts_parent_does_not_hide_the_image(k8s_api: client.ApiClient, namespace: str) -> None:
    """Volumes never hide an image's files: an emptyDir mounted over the directory holding the
    checkout and its environment leaves the project importable and the volume otherwise empty."""
    core = client.CoreV1Api(k8s_api)
    parent = str(REPO.resolve().parent)
    script = f"import os, finetune_trainer; print(sorted(os.listdir({parent!r})), end='', file=open('/dev/termination-log', 'w'))"
    pod = make_pod("over-checkout", ["python", "-c", script], image=PYTHON,
                   volumes=[{"name": "scratch", "emptyDir": {}}],
                   container={"volumeMounts": [{"name": "scratch", "mountPath": parent}]})
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod(k8s_api, namespace, "over-checkout", finished)
    assert phase(done) == "Succeeded", container_status(done)
    assert terminated(done)["message"] == str([REPO.resolve().name])


def test_missing_secret_keeps_the_container_waiting(k8s_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(k8s_api)
    pod = make_pod("needs-secret", ["sh", "-c", 'test "$TOKEN" = late'], container={
        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "t"}}}]})
    core.create_namespaced_pod(namespace, pod)
    waiting = wait_for_pod(k8s_api, namespace, "needs-secret",
                           lambda p: (container_status(p).get("state", {}).get("waiting") or {}).get("reason") == "CreateContainerConfigError")
    assert "later" in container_status(waiting)["state"]["waiting"]["message"]
    core.create_namespaced_secret(namespace, {"metadata": {"name": "later"}, "stringData": {"t": "late"}})
    assert phase(wait_for_pod(k8s_api, namespace, "needs-secret", finished)) == "Succeeded"


def test_object_owned_by_a_deleted_owner_is_garbage_collected(k8s_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(k8s_api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.delete_namespaced_config_map("owner", namespace)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "orphan", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}]}})

    def collected() -> bool:
        try:
            core.read_namespaced_config_map("orphan", namespace)
            return False
        except ApiException as e:
            return e.status == 404

    until(collected, 60, "garbage collection of the orphaned ConfigMap")


def test_job_creates_its_pod_and_completes(k8s_api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(k8s_api)
    batch.create_namespaced_job(namespace, {
        "metadata": {"name": "hello"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": BUSYBOX, "command": ["sh", "-c", "echo job done"]}]}}},
    })

    def complete() -> bool:
        job = batch.read_namespaced_job("hello", namespace)
        return any(c.type == "Complete" and c.status == "True" for c in job.status.conditions or [])

    until(complete, 60, "Job hello Complete")
    pods = client.CoreV1Api(k8s_api).list_namespaced_pod(namespace, label_selector="job-name=hello").items
    assert [p.status.phase for p in pods] == ["Succeeded"]


def test_restart_policy_on_failure_restarts_and_counts(k8s_api: client.ApiClient, namespace: str, tmp_path: Path) -> None:
    script = "n=$(cat /state/n 2>/dev/null || echo 0); echo $((n+1)) > /state/n; [ $n -ge 1 ]"
    pod = make_pod("retry", ["sh", "-c", script], restartPolicy="OnFailure",
                   volumes=[{"name": "state", "hostPath": {"path": str(tmp_path)}}],
                   container={"volumeMounts": [{"name": "state", "mountPath": "/state"}]})
    client.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod)
    done = wait_for_pod(k8s_api, namespace, "retry", finished)
    assert phase(done) == "Succeeded"
    assert container_status(done)["restartCount"] == 1
    assert container_status(done)["lastState"]["terminated"]["exitCode"] == 1


def test_service_account_kubeconfig_has_only_the_rbac_files_rights(
    service_account_kubeconfig: Any, namespace: str, tmp_path: Path
) -> None:
    rbac = tmp_path / "rbac.yaml"
    rbac.write_text(yaml.safe_dump_all([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "localcluster-test-pod-reader"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "cm-writer"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]},
    ]))
    k = Kubectl(service_account_kubeconfig(rbac, name="operator"))
    assert k("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout == f"system:serviceaccount:{namespace}:operator"
    assert k("get", "pods", "-A").returncode == 0
    assert k("create", "configmap", "x", "-n", namespace).returncode == 0
    denied = k("get", "secrets", "-n", namespace, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr
    assert k("create", "configmap", "y", "-n", "default", check=False).returncode != 0


def test_fixture_fails_and_never_skips_when_the_control_plane_is_missing(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "from localcluster import pytest_plugin\n"
        "def pytest_configure(config):\n    pytest_plugin.register(config)\n")
    (tmp_path / "test_x.py").write_text("def test_x(kubeconfig):\n    pass\n")
    env = {**os.environ, "FTO_CONTROL_PLANE_BIN": str(tmp_path / "no-binaries-here")}
    env.pop("FTO_TEST_REUSE_CLUSTER", None)
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "1 error" in out.stdout and "skipped" not in out.stdout, out.stdout
    assert "missing control-plane binaries" in out.stdout


def test_cli_up_down_with_own_fleet_reuses_cached_binaries(tmp_path: Path, local_cluster: ClusterInfo) -> None:
    """A second cluster through the CLI: no GPU nodes, one fake-mode node, memory limits by
    RSS polling (the fallback for hosts without a writable cgroup); down leaves nothing."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"nodes": [
        {"name": "cpu-only-0", "cpu": "4", "memory": "8Gi"},
        {"name": "fake-0", "cpu": "4", "memory": "8Gi", "fake": {"delaySeconds": 0.5, "exitCode": 0},
         "taints": [{"key": "fake", "value": "true", "effect": "NoSchedule"}]},
    ]}))
    state = tmp_path / "state"
    cli = [sys.executable, "-m", "localcluster", "--state-dir", str(state)]
    env = {**os.environ, "FTO_MEMORY_LIMITS": "poll"}
    up = subprocess.run([*cli, "up", "--fleet", str(fleet)], capture_output=True, text=True, timeout=300, env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert str(state / "admin.kubeconfig") in up.stdout
        timings = json.loads((state / "timings.json").read_text())
        assert timings["binaries_cached"] is True
        k = Kubectl(state / "admin.kubeconfig")
        names = sorted(k("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").stdout.split())
        assert names == ["cpu-only-0", "fake-0"]
        assert "nvidia.com/gpu" not in k("get", "nodes", "-o", "json").stdout
        k("apply", "-f", "-", input=json.dumps(make_pod(
            "faked", ["does-not-matter"], image="anything/at-all:1",
            nodeSelector={"kubernetes.io/hostname": "fake-0"},
            tolerations=[{"key": "fake", "operator": "Exists"}])))
        k("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/faked", "--timeout=60s")
        k("apply", "-f", "-", input=json.dumps(make_pod(
            "hog", ["python", "-c", "import time\nblob = b'x' * (400 << 20)\ntime.sleep(60)"], image=PYTHON,
            container={"resources": {"limits": {"memory": "128Mi"}}})))
        k("wait", "--for=jsonpath={.status.containerStatuses[0].state.terminated.reason}=OOMKilled",
          "pod/hog", "--timeout=60s")
        assert "memory limits enforced by rss-polling" in (state / "logs" / "supervisor.log").read_text()
        env = (state / "env").read_text()
        assert f"export KUBECONFIG=\"{state.resolve() / 'admin.kubeconfig'}\"" in env
    finally:
        down = subprocess.run([*cli, "down"], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    pids = [int(p.read_text().split()[0]) for p in (state / "pids").glob("*.pid")]
    assert pids == []
