"""``python -m localcluster up|down|env|status``: a local control plane for development and the demo."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from localcluster.binaries import locate_binaries
from localcluster.cluster import LocalCluster, is_alive
from localcluster.errors import ClusterError


def default_state_dir() -> Path:
    return Path(os.environ.get("ALBM_CLUSTER_DIR") or Path(tempfile.gettempdir()) / "alb-membership-local-cluster")


def _running(state_dir: Path) -> LocalCluster | None:
    try:
        cluster = LocalCluster.load(state_dir)
    except ClusterError:
        return None
    return cluster if all(is_alive(c.pid) for c in cluster.components) else None


def _env_lines(cluster: LocalCluster) -> list[str]:
    path = os.pathsep.join([*locate_binaries().path_entries(), "$PATH"])
    return [f"export KUBECONFIG={cluster.kubeconfig}", f'export PATH="{path}"']


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local-cluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "env", "status"])
    parser.add_argument(
        "--dir",
        type=Path,
        default=default_state_dir(),
        help="state directory (default: $ALBM_CLUSTER_DIR or %(default)s)",
    )
    parser.add_argument("--nodes", type=int, default=2, help="fake nodes for `up` (default: %(default)s)")
    parser.add_argument(
        "--real-nodes",
        type=int,
        default=0,
        help="real nodes for `up`: a kubelet and a containerd each, pods run for real on a bridge of their own "
        "(needs root and `apt-get install containerd`; default: %(default)s)",
    )
    args = parser.parse_args(argv)
    state_dir: Path = args.dir

    def say(msg: str) -> None:
        print(f"[local-cluster] {msg}", file=sys.stderr, flush=True)

    try:
        if args.command == "up":
            running = _running(state_dir)
            if running:
                say(f"already running ({running.server}); `down` first to start afresh")
            else:
                if (state_dir / "cluster.json").exists():  # a half-dead cluster: stop what is left of it
                    LocalCluster.load(state_dir).stop()
                shutil.rmtree(state_dir, ignore_errors=True)
                running = LocalCluster(state_dir=state_dir, nodes=args.nodes, real_nodes=args.real_nodes, detached=True)
                running.start(progress=say)
            say('use it with:  eval "$(scripts/local-cluster env)"')
            print("\n".join(_env_lines(running)))
        elif args.command == "down":
            if (state_dir / "cluster.json").exists():
                LocalCluster.load(state_dir).stop()
                say("stopped")
            else:
                say("nothing running")
            shutil.rmtree(state_dir, ignore_errors=True)
        elif args.command == "env":
            running = _running(state_dir)
            if not running:
                raise ClusterError(f"no running local cluster in {state_dir}; run `scripts/local-cluster up`")
            print("\n".join(_env_lines(running)))
        else:
            running = _running(state_dir)
            print(f"running at {running.server}" if running else "not running")
            return 0 if running else 1
    except ClusterError as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
