"""Container health check: ask a grpc.health.v1 server for the overall status ("" service).

Used by the images' HEALTHCHECK. The address comes from the first argument, else
ATOLL_HEALTHCHECK_ADDRESS, else ATOLL_LISTEN (coordinator), else ATOLL_WORKER_LISTEN (agent).
A wildcard host (0.0.0.0, ::, empty) is checked on loopback. Exit 0 when SERVING, else 1.
"""

import os
import sys


def target(addr: str) -> str:
    host, _, port = addr.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def main() -> int:
    addr = (sys.argv[1] if len(sys.argv) > 1 else None) or os.environ.get("ATOLL_HEALTHCHECK_ADDRESS") \
        or os.environ.get("ATOLL_LISTEN") or os.environ.get("ATOLL_WORKER_LISTEN")
    if not addr:
        print("healthcheck: no address (pass HOST:PORT or set ATOLL_HEALTHCHECK_ADDRESS)", file=sys.stderr)
        return 1
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target(addr)) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
    except grpc.RpcError as exc:
        print(f"healthcheck: {target(addr)}: {exc.code().name}", file=sys.stderr)
        return 1
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"healthcheck: {target(addr)}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
