"""atoll.core: the ground floor every part stands on: typed errors, gRPC and HTTP plumbing,
TLS, structured logs, archives and the version. It imports nothing of atoll's above it."""
