"""The deletion gate: admission reviews, the webhook server and its TLS."""
