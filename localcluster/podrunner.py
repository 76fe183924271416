"""The kubelet stand-in: runs pods bound to the simulated nodes as local processes.

One watch over all pods feeds one worker thread per pod (keyed by uid). A worker prepares
volumes and environment, starts each container through :mod:`podexec` (own mount namespace,
own session, own memory cgroup where possible), and writes pod status as a kubelet would.

Files per pod, under ``$STATE/pods/<namespace>_<name>_<uid>/``:
    <container>.log              stdout and stderr of every run of the container
    <container>.termination-log  bind-mounted at terminationMessagePath
    volumes/<volume>/            ConfigMap, Secret, projected, emptyDir contents
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from localcluster import podexec
from localcluster.fleet import NodeSpec
from localcluster.images import ImageTable, LocalImage
from localcluster import memlimit
from localcluster import probes as probing
from localcluster.memlimit import ContainerCgroup, MemoryLimiter, session_rss_bytes
from localcluster.nodes import NODE_IP, lost_nodes
from localcluster.podfiles import NotReadyError, PodFiles, expand, mounts
from localcluster.procs import start_time

log = logging.getLogger(__name__)

Obj = dict[str, Any]
TICK = 0.2
MAX_MESSAGE = 4096
IMAGE_BACKOFF_AFTER = 5.0


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Run:
    """One run of one container."""

    name: str
    proc: subprocess.Popen[bytes] | None = None
    cgroup: ContainerCgroup | None = None
    limit: int | None = None
    started_at: str = ""
    oom: bool = False
    exit_code: int | None = None


@dataclass
class ContainerState:
    """What the kubelet reports for one container."""

    name: str
    image: str
    restart_count: int = 0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    run: Run | None = None
    probes: probing.ContainerProbes | None = None
    kill_at: float | None = None  # SIGKILL deadline after a failed liveness/startup probe

    def ready(self) -> bool:
        return "running" in self.state and (self.probes is None or self.probes.ready())

    def status(self, pod_uid: str) -> Obj:
        running = "running" in self.state
        full_state: Obj = {"waiting": None, "running": None, "terminated": None}
        full_state.update(self.state)
        last: Obj = {"waiting": None, "running": None, "terminated": None}
        last.update(self.last_state)
        return {
            "name": self.name,
            "image": self.image,
            "imageID": f"localcluster://{self.image}",
            "containerID": f"localcluster://{pod_uid}/{self.name}/{self.restart_count}" if self.run else None,
            "ready": self.ready(),
            "started": running and (self.probes is None or self.probes.started()),
            "restartCount": self.restart_count,
            "state": full_state,
            "lastState": last,
        }


class PodWorker(threading.Thread):
    """Runs one pod from the first sighting to the confirmed deletion."""

    def __init__(self, runner: "PodRunner", pod: Obj, node: NodeSpec) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.runner = runner
        self.pod = pod
        self.node = node
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.dir = runner.state_dir / "pods" / f"{self.ns}_{self.pod_name}_{self.uid}"
        self.deleting = threading.Event()
        self.gone = threading.Event()
        self.grace = 30.0
        self.containers = [ContainerState(c["name"], c["image"]) for c in pod["spec"]["containers"]]
        self.init_containers = [ContainerState(c["name"], c["image"]) for c in pod["spec"].get("initContainers") or []]
        self.conditions: dict[str, Obj] = {}
        self.phase = "Pending"
        self.start_time = now()
        self._volumes: dict[str, Path] = {}
        self._refresh_at = float("inf")
        self.port_maps: dict[str, dict[int, int]] = {}  # container → containerPort → host port

    # --- status ------------------------------------------------------------------------

    def _cond(self, type_: str, status: bool, reason: str | None = None) -> None:
        s = "True" if status else "False"
        old = self.conditions.get(type_)
        if old and old["status"] == s and old.get("reason") == reason:
            return
        c: Obj = {"type": type_, "status": s, "lastProbeTime": None,
                  "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == s else now()}
        c["reason"] = reason
        self.conditions[type_] = c

    def post(self) -> None:
        """Patch the pod's status (strategic merge: conditions by type, containers by name)."""
        if self.runner.node_lost(self.node.name):
            return  # a stopped kubelet reports nothing
        all_running = all(c.ready() for c in self.containers)
        terminal = self.phase in ("Succeeded", "Failed")
        self._cond("PodReadyToStartContainers", not terminal)
        self._cond("Initialized", all("terminated" in c.state for c in self.init_containers) or self.phase != "Pending")
        reason = "PodCompleted" if terminal else (None if all_running else "ContainersNotReady")
        self._cond("ContainersReady", all_running and not terminal, reason)
        self._cond("Ready", all_running and not terminal, reason)
        status: Obj = {
            "phase": self.phase,
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "podIP": NODE_IP,
            "podIPs": [{"ip": NODE_IP}],
            "startTime": self.start_time,
            "conditions": list(self.conditions.values()),
            "containerStatuses": [c.status(self.uid) for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status(self.uid) for c in self.init_containers]
        try:
            self.runner.core.patch_namespaced_pod_status(self.pod_name, self.ns, {"status": status})
        except ApiException as e:
            if e.status == 404:
                self.gone.set()
            else:
                log.warning("%s: status update failed: %s %s", self.name, e.status, e.reason)

    # --- lifecycle ---------------------------------------------------------------------

    def update(self, pod: Obj) -> None:
        """A newer version of the pod arrived from the watch."""
        self.pod = pod
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") and not self.deleting.is_set():
            self.grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            self.deleting.set()

    def run(self) -> None:
        try:
            self._run()
        except Exception:  # noqa: BLE001 - one broken pod must not take the runner down
            log.exception("%s: worker failed", self.name)
        finally:
            self._cleanup()
            self.runner.forget(self.uid)

    def _run(self) -> None:
        phase = (self.pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            # Finished before a runner restart: nothing to run, only the deletion to confirm.
            self.phase = phase
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.post()
            if self.node.fake:
                self._fake()
            else:
                self._real()
        if self.phase in ("Succeeded", "Failed") and not self.deleting.is_set():
            # Nothing left to run; the runner confirms a later deletion without a thread.
            return
        while not self.deleting.wait(1.0):
            if self.gone.is_set():
                return
        self._confirm_deletion()

    def _fake(self) -> None:
        for c in self.containers:
            c.state = {"running": {"startedAt": now()}}
            c.run = Run(c.name)
        self.phase = "Running"
        self.post()
        assert self.node.fake is not None
        if self.deleting.wait(self.node.fake.delay_seconds):
            code, reason = 137, "Error"
        else:
            code = self.node.fake.exit_code
            reason = "Completed" if code == 0 else "Error"
        for c in self.containers:
            c.state = {"terminated": {"exitCode": code, "reason": reason, "startedAt": c.state["running"]["startedAt"], "finishedAt": now()}}
        self.phase = "Succeeded" if code == 0 else "Failed"
        self.post()

    def _images(self, states: list[ContainerState]) -> list[LocalImage] | None:
        images = [self.runner.images.resolve(c.image) for c in states]
        missing = [c for c, img in zip(states, images) if img is None]
        if not missing:
            return [img for img in images if img is not None]
        t0 = time.monotonic()
        for c in missing:
            c.state = {"waiting": {"reason": "ErrImagePull", "message": (
                f'image "{c.image}" is not in the localcluster image table {self.runner.images.path}; '
                "add an entry mapping it to a local entrypoint")}}
        self.post()
        backoff = False
        while not self.deleting.wait(1.0) and not self.gone.is_set():
            if not backoff and time.monotonic() - t0 > IMAGE_BACKOFF_AFTER:
                backoff = True
                for c in missing:
                    c.state = {"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{c.image}"'}}
                self.post()
        return None

    def _prepare(self) -> bool:
        """Write volumes, retrying while something is missing; False if deleted meanwhile."""
        last = ""
        while not self.deleting.is_set() and not self.gone.is_set():
            try:
                self._volumes = self.runner.files.volumes(self.pod, self.dir)
                self._refresh_at = time.monotonic() + 0.8 * self._token_lifetime()
                return True
            except NotReadyError as e:
                if e.message != last:
                    last = e.message
                    for c in self.init_containers + self.containers:
                        c.state = {"waiting": {"reason": "ContainerCreating" if "not found" in e.message else e.reason, "message": e.message}}
                    self.post()
            self.deleting.wait(1.0)
        return False

    def _token_lifetime(self) -> float:
        lifetimes = [
            int(src["serviceAccountToken"].get("expirationSeconds") or 3600)
            for vol in self.pod["spec"].get("volumes") or []
            for src in (vol.get("projected") or {}).get("sources") or []
            if "serviceAccountToken" in src
        ]
        return float(min(lifetimes)) if lifetimes else float("inf")

    def _maybe_refresh_tokens(self) -> None:
        if time.monotonic() < self._refresh_at:
            return
        try:
            self._refresh_at = time.monotonic() + self.runner.files.refresh_tokens(self.pod, self.dir)
        except (NotReadyError, ApiException, OSError) as e:
            log.warning("%s: token refresh failed (retrying in 10 s): %s", self.name, e)
            self._refresh_at = time.monotonic() + 10.0

    def _real(self) -> None:
        if self._images(self.init_containers + self.containers) is None:
            return
        if not self._prepare():
            return
        spec = self.pod["spec"]
        for st, c in zip(self.init_containers, spec.get("initContainers") or []):
            while True:
                if not self._start(st, c):
                    return
                self.post()
                self._wait([st])
                code = st.state.get("terminated", {}).get("exitCode")
                if code == 0 or self.deleting.is_set():
                    break
                if spec.get("restartPolicy", "Always") == "Never":
                    self.phase = "Failed"
                    self.post()
                    return
                self._restart_delay(st)
            if self.deleting.is_set():
                self._finish_deleted()
                return
        for st, c in zip(self.containers, spec["containers"]):
            if not self._start(st, c):
                return
        self.phase = "Running"
        self.post()
        policy = spec.get("restartPolicy", "Always")
        while True:
            self._wait(self.containers, any_exit=True)
            if self.deleting.is_set():
                self._finish_deleted()
                return
            restarted = False
            for st, c in zip(self.containers, spec["containers"]):
                term = st.state.get("terminated")
                if term is None or st.run is None:
                    continue
                if policy == "Always" or (policy == "OnFailure" and term["exitCode"] != 0):
                    self._restart_delay(st)
                    if self.deleting.is_set():
                        self._finish_deleted()
                        return
                    st.last_state = {"terminated": term}
                    st.restart_count += 1
                    if not self._start(st, c):
                        return
                    restarted = True
            if all("terminated" in c.state for c in self.containers):
                codes = [c.state["terminated"]["exitCode"] for c in self.containers]
                self.phase = "Succeeded" if all(x == 0 for x in codes) else "Failed"
                self.post()
                return
            if restarted:
                self.post()

    def _restart_delay(self, st: ContainerState) -> None:
        # CrashLoopBackOff, shortened: 1 s doubling to 10 s.
        delay = min(10.0, 2.0 ** min(st.restart_count, 4) / 2)
        self.deleting.wait(delay)

    def _start(self, st: ContainerState, c: Obj) -> bool:
        """Start one container; on a config error wait (retrying) until it can start."""
        img = self.runner.images.resolve(c["image"])
        assert img is not None
        base = {
            "PATH": img.path(),
            "HOME": "/root",
            "HOSTNAME": self.pod_name,
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.runner.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.runner.api_port),
            "KUBERNETES_PORT": f"tcp://127.0.0.1:{self.runner.api_port}",
            **img.env,
        }
        if c["name"] not in self.port_maps:
            self.port_maps[c["name"]] = probing.allocate_ports(c, img.port_env)
            self._annotate_ports()
        mapping = self.port_maps[c["name"]]
        while True:
            try:
                env = self.runner.files.env(self.pod, c, base)
                env.update(probing.port_env_values(c, img.port_env, mapping))
                mnts = mounts(c, self._volumes)
                break
            except NotReadyError as e:
                st.state = {"waiting": {"reason": e.reason, "message": e.message}}
                self.post()
                if self.deleting.wait(2.0) or self.gone.is_set():
                    return False
        argv = [expand(a, env) for a in img.argv(c.get("command") or [], c.get("args") or [])]
        term_path = c.get("terminationMessagePath") or "/dev/termination-log"
        term_file = self.dir / f"{c['name']}.termination-log"
        term_file.write_bytes(b"")
        mnts.append({"source": str(term_file), "target": term_path, "readOnly": False})
        limit_raw = ((c.get("resources") or {}).get("limits") or {}).get("memory")
        limit = int(parse_quantity(limit_raw)) if limit_raw else None
        run = Run(c["name"], limit=limit)
        if limit:
            run.cgroup = self.runner.memory.create(f"{self.uid}_{c['name']}_{st.restart_count}", limit)
        start_error = self.dir / f"{c['name']}.start-error"
        start_error.unlink(missing_ok=True)
        spec_file = self.dir / f"{c['name']}.exec.json"
        spec_file.write_text(json.dumps({
            "argv": argv,
            "env": env,
            "workingDir": c.get("workingDir"),
            "hostname": (self.pod["spec"].get("hostname") or self.pod_name)[:63],
            "mounts": mnts,
            # The stand-in image's own filesystem: the environment and the project it runs from.
            # A volume mounted over a parent (an emptyDir on /tmp while the checkout lives under
            # /tmp) must not hide it, just as volumes never hide an image's /usr.
            "imagePaths": [sys.prefix, str(Path(__file__).resolve().parent.parent)],
            "cgroupProcs": [run.cgroup.procs_file] if run.cgroup else [],
            "startErrorFile": str(start_error),
        }))
        with open(self.dir / f"{c['name']}.log", "ab") as logf:
            run.proc = subprocess.Popen(
                [sys.executable, "-I", podexec.__file__, str(spec_file)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, env={"PATH": img.path()},
            )
        run.started_at = now()
        st.run = run
        st.state = {"running": {"startedAt": run.started_at}}
        st.probes = probing.ContainerProbes(c, mapping) if any(f"{k}Probe" in c for k in ("startup", "liveness", "readiness")) else None
        st.kill_at = None
        self.runner.track(run.proc.pid)
        return True

    def _wait(self, states: list[ContainerState], any_exit: bool = False) -> None:
        """Tick until every container in ``states`` exits (or one, or deletion); enforce limits."""
        while True:
            if self.deleting.is_set() or self.gone.is_set():
                return
            self._maybe_refresh_tokens()
            exited = False
            changed = False
            for st in states:
                run = st.run
                if run is None or run.proc is None or "terminated" in st.state:
                    continue
                self._enforce_memory(run)
                changed = self._probe(st, run) or changed
                if run.proc.poll() is not None:
                    self._record_exit(st)
                    exited = True
            if exited or changed:
                self.post()
            live = [s for s in states if "running" in s.state]
            if not live or (any_exit and exited):
                return
            time.sleep(TICK)

    def _probe(self, st: ContainerState, run: Run) -> bool:
        """Run the container's due probes; True when its readiness changed. A failed liveness or
        startup probe stops the container (SIGTERM, SIGKILL after the grace period) and the
        restart policy restarts it, as the kubelet does."""
        assert run.proc is not None
        if st.kill_at is not None:
            if time.monotonic() >= st.kill_at:
                _kill_session(run.proc.pid)
            return False
        if st.probes is None:
            return False
        changed, kill = st.probes.tick(NODE_IP)
        if kill:
            log.warning("%s: container %s %s; killing it", self.name, st.name, kill)
            grace = self.pod["spec"].get("terminationGracePeriodSeconds")
            st.kill_at = time.monotonic() + float(30 if grace is None else grace)
            try:
                os.kill(run.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return changed

    def _annotate_ports(self) -> None:
        """Record the host ports given to declared containerPorts (pods share the host network)."""
        flat = {str(k): v for m in self.port_maps.values() for k, v in m.items()}
        if not flat:
            return
        try:
            self.runner.core.patch_namespaced_pod(self.pod_name, self.ns, {"metadata": {"annotations": {
                probing.HOST_PORTS_ANNOTATION: json.dumps(flat, sort_keys=True)}}})
        except ApiException as e:
            log.warning("%s: cannot record host ports: %s %s", self.name, e.status, e.reason)

    def _enforce_memory(self, run: Run) -> None:
        if run.limit is None or run.proc is None or run.oom:
            return
        if run.cgroup is not None:
            if run.cgroup.oom_kills() > 0:
                # The kernel killed one process; a container dies as a whole (memory.oom.group).
                run.oom = True
                run.cgroup.kill_all()
                _kill_session(run.proc.pid)
        elif session_rss_bytes(run.proc.pid) > run.limit:
            run.oom = True
            _kill_session(run.proc.pid)

    def _record_exit(self, st: ContainerState) -> None:
        run = st.run
        assert run is not None and run.proc is not None
        rc = run.proc.wait()
        # A container ends with its main process: whatever it left behind dies too.
        _kill_session(run.proc.pid)
        if run.cgroup is not None:
            if not run.oom and run.cgroup.oom_kills() > 0:
                run.oom = True
            run.cgroup.remove()
        code = 128 - rc if rc < 0 else rc
        c = next(x for x in (self.pod["spec"].get("initContainers") or []) + self.pod["spec"]["containers"] if x["name"] == st.name)
        message = self._message(st.name, c, code)
        start_error = self.dir / f"{st.name}.start-error"
        if run.oom:
            code, reason = 137, "OOMKilled"
        elif start_error.exists() and start_error.stat().st_size > 0:
            reason = "StartError"
            message = start_error.read_text()[:MAX_MESSAGE]
        else:
            reason = "Completed" if code == 0 else "Error"
        term: Obj = {"exitCode": code, "reason": reason, "startedAt": run.started_at, "finishedAt": now(),
                     "containerID": f"localcluster://{self.uid}/{st.name}/{st.restart_count}"}
        if code == 128 + signal.SIGKILL or code == 128 + signal.SIGTERM:
            term["signal"] = code - 128
        if message:
            term["message"] = message
        st.state = {"terminated": term}
        run.exit_code = code

    def _message(self, name: str, c: Obj, code: int) -> str:
        raw = (self.dir / f"{name}.termination-log").read_bytes()[:MAX_MESSAGE]
        if not raw and code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            logf = self.dir / f"{name}.log"
            lines = logf.read_bytes().splitlines()[-80:] if logf.exists() else []
            raw = b"\n".join(lines)[-2048:]
        return raw.decode(errors="replace")

    def _finish_deleted(self) -> None:
        """SIGTERM every running container, SIGKILL after the grace period, then report."""
        live = [c for c in self.init_containers + self.containers if "running" in c.state and c.run and c.run.proc]
        for c in live:
            assert c.run and c.run.proc
            try:
                # As a runtime does: the signal goes to the container's main process only.
                os.kill(c.run.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and any(c.run and c.run.proc and c.run.proc.poll() is None for c in live):
            time.sleep(TICK)
        for c in live:
            assert c.run and c.run.proc
            if c.run.cgroup:
                c.run.cgroup.kill_all()
            _kill_session(c.run.proc.pid)
            self._record_exit(c)
        codes = [c.state.get("terminated", {}).get("exitCode") for c in self.containers]
        self.phase = "Succeeded" if codes and all(x == 0 for x in codes) else "Failed"
        self.post()

    def _confirm_deletion(self) -> None:
        if any("running" in c.state for c in self.init_containers + self.containers):
            self._finish_deleted()
        if not self.gone.is_set():
            self.runner.confirm_deletion(self.ns, self.pod_name, self.uid)

    def kill_now(self) -> None:
        """Runner shutdown: kill every process of this pod at once."""
        for c in self.init_containers + self.containers:
            if c.run and c.run.proc and c.run.proc.poll() is None:
                if c.run.cgroup:
                    c.run.cgroup.kill_all()
                _kill_session(c.run.proc.pid)
                c.run.proc.wait()

    def _cleanup(self) -> None:
        self.kill_now()
        for c in self.init_containers + self.containers:
            if c.run and c.run.cgroup:
                c.run.cgroup.remove()
        vols = self.dir / "volumes"
        for v in vols.iterdir() if vols.is_dir() else []:
            if os.path.ismount(v):
                subprocess.run(["umount", "-l", str(v)], check=False)


def _signal_session(sid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to every process of the container's session."""
    for entry in memlimit.session_processes(sid):
        try:
            os.kill(int(entry.name), sig)
        except OSError:
            continue


def _kill_session(sid: int) -> None:
    """SIGKILL the container's main process and everything left in its session."""
    for entry in memlimit.session_processes(sid):
        try:
            os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue


class PodRunner:
    """Watches pods bound to the fleet's nodes and runs each in a :class:`PodWorker`."""

    def __init__(self, api: client.ApiClient, nodes: list[NodeSpec], state_dir: Path,
                 api_port: int, ca_crt: Path, images: ImageTable | None = None) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.nodes = {n.name: n for n in nodes}
        self.state_dir = state_dir
        self.api_port = api_port
        self.images = images or ImageTable()
        self.files = PodFiles(api, ca_crt)
        self.memory = MemoryLimiter(f"localcluster-{os.getpid()}")
        self.workers: dict[str, PodWorker] = {}
        self.finished: set[str] = set()
        self.confirmed: set[str] = set()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.orphans: set[str] = set()  # deleted while their node was lost
        self.pidfile = state_dir / "pods" / "container-pids"
        (state_dir / "pods").mkdir(parents=True, exist_ok=True)
        log.info("memory limits enforced by %s", self.memory.mode)

    def track(self, pid: int) -> None:
        """Record a container's main pid so ``down`` can kill it even if the runner died."""
        with self.lock, open(self.pidfile, "a") as f:
            f.write(f"{pid} {start_time(pid) or ''}\n")

    def forget(self, uid: str) -> None:
        """The worker of ``uid`` ended: never start another one for this pod."""
        with self.lock:
            self.workers.pop(uid, None)
            self.finished.add(uid)

    def container_running(self, ns: str, name: str, container: str) -> bool:
        """True while a container of a live pod ``ns/name`` is (or may yet be) running."""
        with self.lock:
            workers = [w for w in self.workers.values() if w.ns == ns and w.pod_name == name]
        return any(
            "terminated" not in c.state
            for w in workers
            for c in w.init_containers + w.containers
            if c.name == container
        )

    def node_lost(self, name: str) -> bool:
        """Is the node's simulated kubelet stopped (localcluster.nodes.lose_node)?"""
        return name in lost_nodes(self.state_dir)

    def confirm_deletion(self, ns: str, name: str, uid: str) -> None:
        """Delete with grace 0, as a kubelet does once the containers are gone."""
        with self.lock:
            if uid in self.confirmed:
                return
            self.confirmed.add(uid)
        try:
            self.core.delete_namespaced_pod(
                name, ns, body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
            )
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("pod %s/%s: final delete failed: %s", ns, name, e.reason)

    def _dispatch(self, pod: Obj) -> None:
        node = self.nodes.get((pod.get("spec") or {}).get("nodeName") or "")
        if node is None or self.node_lost(node.name):
            return  # a lost node's kubelet sees nothing: its containers run on, unaware
        meta = pod["metadata"]
        uid = meta["uid"]
        with self.lock:
            done = uid in self.finished
        if done:
            # Events can lag behind a worker that already ended: never run a pod twice.
            if meta.get("deletionTimestamp"):
                self.confirm_deletion(meta["namespace"], meta["name"], uid)
            return
        with self.lock:
            w = self.workers.get(uid)
            if w is None:
                w = PodWorker(self, pod, node)
                self.workers[uid] = w
                w.update(pod)
                w.start()
                return
        w.update(pod)

    def _deleted(self, uid: str) -> None:
        with self.lock:
            w = self.workers.get(uid)
            if w is not None and self.node_lost(w.node.name):
                self.orphans.add(uid)  # killed when the node comes back, as a returning kubelet does
                return
        if w is not None:
            w.gone.set()
            w.deleting.set()
            w.grace = 0

    def _freeze(self, worker: PodWorker, sig: signal.Signals) -> None:
        for c in worker.init_containers + worker.containers:
            if c.run and c.run.proc and c.run.proc.poll() is None:
                _signal_session(c.run.proc.pid, sig)

    def _lost_nodes_loop(self) -> None:
        """Every second: freeze the containers of lost nodes (a partition: they reach nothing, and
        nothing reaches them), thaw them when the node is back, and then stop the pods deleted
        meanwhile as a returning kubelet does (SIGTERM, the pod's grace period, SIGKILL)."""
        frozen: set[str] = set()
        while not self.stop_event.wait(1.0):
            with self.lock:
                workers = dict(self.workers)
            for uid, w in workers.items():
                lost = self.node_lost(w.node.name)
                if lost and uid not in frozen:
                    self._freeze(w, signal.SIGSTOP)
                    frozen.add(uid)
                elif not lost and uid in frozen:
                    self._freeze(w, signal.SIGCONT)
                    frozen.discard(uid)
            frozen &= set(workers)
            with self.lock:
                back = [u for u in self.orphans if u in self.workers and u not in frozen]
                self.orphans -= set(back) | {u for u in self.orphans if u not in self.workers}
            for uid in back:
                w = workers[uid]
                w.grace = float((w.pod.get("spec") or {}).get("terminationGracePeriodSeconds") or 30)
                w.gone.set()
                w.deleting.set()

    def run(self) -> None:
        """List, then watch, forever (until :meth:`stop`); relist on expiry or error."""
        threading.Thread(target=self._lost_nodes_loop, name="lost-nodes", daemon=True).start()
        while not self.stop_event.is_set():
            try:
                resp = self.core.list_pod_for_all_namespaces(_preload_content=False)
                listing = json.loads(resp.data)
                seen = set()
                for pod in listing["items"]:
                    seen.add(pod["metadata"]["uid"])
                    self._dispatch(pod)
                with self.lock:
                    vanished = [u for u in self.workers if u not in seen]
                for u in vanished:
                    self._deleted(u)
                rv = listing["metadata"]["resourceVersion"]
                w = watch.Watch()
                self._watch = w
                for ev in w.stream(self.core.list_pod_for_all_namespaces, resource_version=rv,
                                   timeout_seconds=300, allow_watch_bookmarks=True):
                    if self.stop_event.is_set():
                        break
                    raw = ev["raw_object"]
                    if ev["type"] == "ERROR":
                        break
                    if ev["type"] == "BOOKMARK":
                        continue
                    if ev["type"] == "DELETED":
                        self._deleted(raw["metadata"]["uid"])
                    else:
                        self._dispatch(raw)
            except Exception as e:  # noqa: BLE001 - keep watching through API restarts
                if self.stop_event.is_set():
                    break
                log.warning("pod watch failed (%s); relisting", e)
                self.stop_event.wait(1.0)

    def stop(self) -> None:
        """Stop watching and kill every container process."""
        self.stop_event.set()
        w = getattr(self, "_watch", None)
        if w is not None:
            w.stop()
        with self.lock:
            workers = list(self.workers.values())
        for wk in workers:
            wk.kill_now()
        self.memory.remove_parent()
