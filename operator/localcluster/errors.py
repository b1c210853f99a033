class ClusterError(RuntimeError):
    """The local cluster could not be started or reached; the message says which component and why."""
