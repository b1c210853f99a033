"""Real nodes beside kwok's: a kubelet and a containerd of their own per node, pods on a CNI bridge of their own.

Each node keeps everything under ``<cluster dir>/nodes/<i>`` (a short path: a unix socket's has at most 107 bytes):
containerd's root, state and socket, its CNI configuration (a bridge with a /24 of its own, host-local IPAM with its
data there too), the kubelet's root, pod logs and certificates. What cannot live there is created here and removed
at stop: the bridge interface (made here, with its gateway address, before any pod), the shims containerd starts,
the mounts (container root filesystems, network namespaces, the kubelet's shared root), any iptables rule the
portmap plugin added, and the directories shims, kubelet and runc make at fixed places (SHARED_DIRS). The recipe
and its gotchas: ``shared/reference/real-node.md`` (of the steering repository).

The node is tainted (TAINT) so that the tests' kwok workloads never land on it; its pods tolerate the taint and
select it by label (LABEL), and run the images of localcluster/images.py with ``imagePullPolicy: Never``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from localcluster.errors import ClusterError
from localcluster.images import PAUSE_IMAGE

CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
# The /24s the bridges are drawn from: not podman's 10.88.0.0/16 or 10.89.x, not kwok's 10.244.0.0/16 (POD_CIDR),
# not the Services' 10.96.0.0/16.
SUBNET_POOL = ipaddress.ip_network("10.200.0.0/16")
LABEL = "albmembership.io/real-node"
TAINT = {"key": LABEL, "value": "true", "effect": "NoSchedule"}
# Made at fixed places by containerd's shims (their sockets), the kubelet (links to container logs) and runc (the
# parent of the containers' cgroups, /k8s.io with cgroupsPerQOS off, in each v1 hierarchy).
SHARED_DIRS = (Path("/run/containerd/s"), Path("/run/containerd"), Path("/var/log/containers"))


def shared_dirs() -> list[Path]:
    return [*SHARED_DIRS, *sorted(Path("/sys/fs/cgroup").glob("*/k8s.io"))]


_LOCK = Path(tempfile.gettempdir()) / "albm-real-node-subnets.lock"
_MNT_DETACH = 2


@dataclass
class RealNode:
    """What stop() needs to remove a node, also from another process (``local-cluster down``)."""

    name: str
    dir: str
    bridge: str
    subnet: str
    network: str  # the CNI network's name: portmap names its iptables rules after it

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def socket(self) -> Path:
        return self.path / "containerd" / "containerd.sock"

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


# -- what the machine needs ------------------------------------------------------------------------------------------


def problems(kubelet: Path | None) -> list[str]:
    """Why this machine cannot run a real node (empty when it can), each with what fixes it."""
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    out = []
    if os.geteuid() != 0:
        out.append("real nodes need root (containerd, a bridge interface, mounts)")
    missing = [t for t in ("containerd", "ctr", "containerd-shim-runc-v2") if shutil.which(t, path=path) is None]
    if missing:
        out.append(f"{', '.join(missing)} missing: apt-get install -y containerd")
    if shutil.which("runc", path=path) is None:
        out.append("runc missing: apt-get install -y runc")
    plugins = [p for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).is_file()]
    if plugins:
        fix = "apt-get install -y containernetworking-plugins"
        out.append(f"CNI plugins {', '.join(plugins)} missing in {CNI_BIN_DIR}: {fix}")
    for tool, package in (("podman", "podman"), ("ip", "iproute2"), ("iptables-save", "iptables")):
        if shutil.which(tool, path=path) is None:
            out.append(f"{tool} missing: apt-get install -y {package}")
    if kubelet is None:
        out.append("no kubelet built: run scripts/build-binaries (or `make binaries`)")
    return out


# -- set-up ----------------------------------------------------------------------------------------------------------


def _used_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=False).stdout
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            nets.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True, check=False).stdout
    for line in routes.splitlines():
        dest = line.split()[0]
        if dest != "default":
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.ip_network(dest, strict=False))
    return nets


# The longest socket path under a node's directory is kubelet/pod-resources/kubelet.sock (and containerd's
# containerd/containerd.sock.ttrpc); a unix socket's path has at most 107 bytes.
_LONGEST_SOCKET = len("/kubelet/pod-resources/kubelet.sock")
_MAX_SOCKET_PATH = 107


def allocate(name: str, node_dir: Path) -> RealNode:
    """A bridge and a free /24 for the node, the bridge made at once with its gateway address: the /24 is then in
    the routing table, which is what the next allocation (this cluster's, or another one's) looks at."""
    if len(str(node_dir.resolve())) + _LONGEST_SOCKET > _MAX_SOCKET_PATH:
        raise ClusterError(
            f"{node_dir} is too long a directory for a real node: its sockets' paths would pass "
            f"{_MAX_SOCKET_PATH} bytes; use a cluster directory of at most "
            f"{_MAX_SOCKET_PATH - _LONGEST_SOCKET - len('/nodes/0')} characters"
        )
    tag = hashlib.sha256(str(node_dir.resolve()).encode()).hexdigest()[:8]
    bridge = f"albm{tag}"[:15]
    with _LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        used = _used_networks()
        subnet = next((s for s in SUBNET_POOL.subnets(new_prefix=24) if not any(s.overlaps(u) for u in used)), None)
        if subnet is None:
            raise ClusterError(f"no free /24 left in {SUBNET_POOL} for a real node's bridge")
        node = RealNode(name=name, dir=str(node_dir), bridge=bridge, subnet=str(subnet), network=f"albm-{tag}")
        _ip("link", "add", "name", bridge, "type", "bridge")
        _ip("addr", "add", f"{node.gateway}/{subnet.prefixlen}", "dev", bridge)
        _ip("link", "set", bridge, "up")
    return node


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


def write_containerd_config(node: RealNode) -> Path:
    d = node.path / "containerd"
    for sub in ("root", "state", "cni", "opt"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    conflist = {
        "cniVersion": "1.0.0",
        "name": node.network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": node.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.subnet, "gateway": node.gateway}]],
                    "dataDir": str(d / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (d / "cni" / "10-albm.conflist").write_text(json.dumps(conflist, indent=2))
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config = f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{node.socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # The machine's sandbox does not let a process lower its oom_score_adj: without this, every pod sandbox fails
  # ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  Root = "{d / "state" / "runc"}"

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{d / "cni"}"
  max_conf_num = 1
"""
    path = d / "config.toml"
    path.write_text(config)
    return path


def write_kubelet_config(node: RealNode, port: int, healthz_port: int) -> Path:
    k = node.path / "kubelet"
    k.mkdir(parents=True, exist_ok=True)
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # These machines have a cgroup v1 (hybrid) layout, swap settings of their own, and no systemd.
        "failCgroupV1": False,
        "failSwapOn": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "localStorageCapacityIsolation": False,
        "evictionHard": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "podLogsDir": str(node.path / "pod-logs"),
        "registerWithTaints": [TAINT],
        "serializeImagePulls": False,
        "resolvConf": "/etc/resolv.conf",
    }
    path = k / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def kubelet_argv(kubelet: Path, node: RealNode, kubeconfig: Path, config: Path) -> list[str]:
    k = node.path / "kubelet"
    return [
        str(kubelet),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={k}",
        f"--cert-dir={k / 'pki'}",
        f"--hostname-override={node.name}",
        # The bridge's own address: the node then has an InternalIP (pods a hostIP, hostNetwork pods a pod IP) on
        # the bridge this cluster made, and nothing is ever sent to the machine's own address. (127.0.0.1 is
        # refused: "nodeIP can't be loopback", and the node gets no address.)
        f"--node-ip={node.gateway}",
        f"--node-labels={LABEL}=true,type=real",
        "--v=1",
    ]


def containerd_argv(config: Path) -> list[str]:
    return ["containerd", f"--config={config}", "--log-level=warn"]


def wait_containerd(node: RealNode, alive: Callable[[], bool], deadline: float) -> None:
    while not node.socket.exists() or ctr(node, "version", check=False) is None:
        if not alive():
            raise ClusterError(f"containerd of {node.name} exited during start-up")
        if time.monotonic() > deadline:
            raise ClusterError(f"containerd of {node.name} did not answer on {node.socket} in time")
        time.sleep(0.1)


def ctr(node: RealNode, *args: str, check: bool = True, timeout: float = 300) -> str | None:
    proc = subprocess.run(
        ["ctr", f"--address={node.socket}", "--namespace=k8s.io", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if proc.returncode != 0:
        if check:
            raise ClusterError(f"ctr {' '.join(args)} ({node.name}) failed: {proc.stderr.strip()[-2000:]}")
        return None
    return proc.stdout


def import_images(node: RealNode, archive: Path) -> None:
    ctr(node, "images", "import", str(archive))


# -- tear-down -------------------------------------------------------------------------------------------------------


def kill_tasks(node: RealNode) -> None:
    """What the kubelet left running (it was stopped, or never stopped its pods): SIGKILL each task, then delete
    the tasks and containers, while containerd still answers."""
    out = ctr(node, "tasks", "list", "--quiet", check=False, timeout=30) or ""
    for task in out.split():
        ctr(node, "tasks", "kill", "--signal", "SIGKILL", task, check=False, timeout=30)
    for task in out.split():
        ctr(node, "tasks", "delete", "--force", task, check=False, timeout=30)
    for container in (ctr(node, "containers", "list", "--quiet", check=False, timeout=30) or "").split():
        ctr(node, "containers", "delete", container, check=False, timeout=30)


# The programs of a node, known by their command line naming its directory (config, socket, root).
NODE_PROGRAMS = ("containerd", "containerd-shim-runc-v2", "runc", "kubelet")


def container_ids(node: RealNode) -> set[str]:
    """The IDs of every container and sandbox the node's containerd made, read from its directories (so also once
    containerd is gone): runc keeps each one's cgroup at /k8s.io/<id> (cgroupsPerQOS off)."""
    d = node.path / "containerd"
    places = (
        d / "state" / "io.containerd.runtime.v2.task" / "k8s.io",
        d / "state" / "runc" / "k8s.io",
        d / "root" / "io.containerd.grpc.v1.cri" / "containers",
        d / "root" / "io.containerd.grpc.v1.cri" / "sandboxes",
    )
    return {e.name for place in places if place.is_dir() for e in place.iterdir() if len(e.name) == 64}


def leftover_processes(node: RealNode, ids: set[str] | None = None) -> list[int]:
    """Processes of this node still running: its containerd and kubelet, the shims containerd started (their
    command line names its socket), and container processes (in a cgroup of one of its containers: their root
    directory, after pivot_root, tells nothing)."""
    ids = container_ids(node) if ids is None else ids
    mine = []
    needle = str(node.path)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cgroups = (entry / "cgroup").read_text().splitlines() if ids else []
        except OSError:
            continue
        program = os.path.basename(argv[0].decode(errors="replace"))
        cmdline = b" ".join(argv).decode(errors="replace")
        if (program in NODE_PROGRAMS and needle in cmdline) or any(
            line.rsplit("/k8s.io/", 1)[-1] in ids for line in cgroups if "/k8s.io/" in line
        ):
            mine.append(int(entry.name))
    return mine


def leftover_cgroups(node: RealNode, ids: set[str] | None = None) -> list[str]:
    ids = container_ids(node) if ids is None else ids
    return [str(c) for i in sorted(ids) for c in Path("/sys/fs/cgroup").glob(f"*/k8s.io/{i}")]


def shim_sockets(node: RealNode, ids: set[str] | None = None) -> list[str]:
    """Shims' sockets left in /run/containerd/s (a shim killed outright leaves its own): containerd 1.6 names each
    sha256(<containerd's address>/<namespace>/<id>)."""
    ids = container_ids(node) if ids is None else ids
    names = {hashlib.sha256(f"{node.socket}/k8s.io/{i}".encode()).hexdigest() for i in ids}
    shim_dir = Path("/run/containerd/s")
    return [str(shim_dir / n) for n in sorted(names) if (shim_dir / n).exists()]


def leftover_mounts(node: RealNode) -> list[str]:
    needle = str(node.path.resolve())
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == needle or point.startswith(needle + "/"):
            out.append(point)
    return out


def leftover_interfaces(node: RealNode) -> list[str]:
    return [node.bridge] if Path(f"/sys/class/net/{node.bridge}").exists() else []


def leftover_iptables(node: RealNode) -> list[str]:
    """iptables rules that name the node's CNI network or subnet (portmap's, for pods with host ports)."""
    out = []
    for table in ("nat", "filter"):
        proc = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=False)
        out += [f"{table}: {r}" for r in proc.stdout.splitlines() if node.network in r or node.subnet in r]
    if _idle_portmap_chains():
        out.append("nat: portmap's CNI-HOSTPORT-* chains, with no port mapping left in them")
    return out


def _idle_portmap_chains() -> list[str]:
    """portmap's shared chains (made at a pod's first host port, and never removed by portmap) once no port
    mapping of any pod, this cluster's or another's, is left in them."""
    dump = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=False).stdout
    lines = dump.splitlines()
    if any(r.startswith("-A CNI-HOSTPORT-DNAT ") for r in lines):
        return []
    return [line[1:].split()[0] for line in lines if line.startswith(":CNI-HOSTPORT-")]


def leftovers(node: RealNode) -> dict[str, list[str]]:
    """Anything of the node that is still there; empty lists after stop()."""
    ids = container_ids(node)
    return {
        "processes": [str(p) for p in leftover_processes(node, ids)],
        "cgroups": leftover_cgroups(node, ids),
        "shim sockets": shim_sockets(node, ids),
        "mounts": leftover_mounts(node),
        "interfaces": leftover_interfaces(node),
        "iptables": leftover_iptables(node),
        "log links": [str(p) for p in _log_links(node)],
        "directories": [str(d) for d in shared_dirs() if d.is_dir() and not _has_subdirs(d)],
    }


def sweep(node: RealNode) -> None:
    """Removes whatever the node left on the machine; safe to call on a node that is gone already."""
    ids = container_ids(node)  # before anything under the node's directory goes
    for _ in range(3):
        pids = leftover_processes(node, ids)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 5
        while time.monotonic() < end and any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
            time.sleep(0.05)
    for cgroup in leftover_cgroups(node, ids):
        with contextlib.suppress(OSError):
            Path(cgroup).rmdir()
    for sock in shim_sockets(node, ids):
        Path(sock).unlink(missing_ok=True)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for _ in range(3):  # a mount can hide another under it: deepest first, then look again
        points = sorted(set(leftover_mounts(node)), key=len, reverse=True)
        if not points:
            break
        for point in points:
            libc.umount2(point.encode(), _MNT_DETACH)
    if leftover_interfaces(node):
        subprocess.run(["ip", "link", "delete", node.bridge], capture_output=True, check=False)
    _remove_iptables(node)
    for link in _log_links(node):
        link.unlink(missing_ok=True)
    # Directories the shims and the kubelet make wherever they run (their place is fixed), once nothing is in them:
    # another cluster's node may be using them still.
    for d in shared_dirs():
        with contextlib.suppress(OSError):
            d.rmdir()


def _has_subdirs(d: Path) -> bool:
    """A directory with entries (a cgroup: with child cgroups), that another node may be using."""
    try:
        entries = list(d.iterdir())
    except OSError:
        return True
    return any(e.is_dir() for e in entries) if str(d).startswith("/sys/fs/cgroup/") else bool(entries)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def _log_links(node: RealNode) -> list[Path]:
    """The kubelet links each container's log into /var/log/containers, whatever its podLogsDir."""
    links = Path("/var/log/containers")
    if not links.is_dir():
        return []
    needle = str(node.path)
    return [p for p in links.iterdir() if p.is_symlink() and os.readlink(p).startswith(needle)]


def _remove_iptables(node: RealNode) -> None:
    for table in ("nat", "filter"):
        dump = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=False).stdout
        rules = [r for r in dump.splitlines() if r.startswith("-A ") and (node.network in r or node.subnet in r)]
        for rule in rules:
            args = rule.split()
            args[0] = "-D"
            # iptables-save quotes comments; the argument list of -D must not carry the quotes.
            subprocess.run(["iptables", "-t", table, *_unquote(args)], capture_output=True, check=False)
    chains = _idle_portmap_chains()
    if chains:
        dump = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=False).stdout
        for rule in dump.splitlines():
            args = rule.split()
            if args[:1] == ["-A"] and args[1] not in chains and "-j" in args and args[args.index("-j") + 1] in chains:
                args[0] = "-D"
                subprocess.run(["iptables", "-t", "nat", *_unquote(args)], capture_output=True, check=False)
        for chain in chains:
            subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True, check=False)
        for chain in chains:
            subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True, check=False)


def _unquote(args: list[str]) -> list[str]:
    out: list[str] = []
    buf: list[str] | None = None
    for a in args:
        if buf is not None:
            buf.append(a)
            if a.endswith('"'):
                out.append(" ".join(buf)[1:-1])
                buf = None
        elif a.startswith('"') and not (a.endswith('"') and len(a) > 1):
            buf = [a]
        else:
            out.append(a.strip('"'))
    return out
