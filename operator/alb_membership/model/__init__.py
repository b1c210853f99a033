"""The resource and its members as plain data: spec, owners, the per-group ledger, state, status."""
