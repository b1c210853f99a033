"""A real, local Kubernetes control plane for development and tests.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are built from Go modules by
``scripts/build-binaries``; kwok stands in for the kubelet so pods get IPs, become Ready, and stay
Terminating for their grace period, all without containers. ``LocalCluster(real_nodes=N)`` adds nodes with a real
kubelet and containerd (localcluster/realnode.py), whose pods run as processes on a bridge of their own.
"""

from localcluster import realnode
from localcluster.cluster import LocalCluster
from localcluster.errors import ClusterError

__all__ = ["ClusterError", "LocalCluster", "realnode"]
