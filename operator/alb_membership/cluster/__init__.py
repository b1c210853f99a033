"""The cluster side: lean watches and the store they fill, writes (status, Events), leader election."""
