"""A gRPC health client on gRPC's C core (grpcio, grpcio-health-checking): calls
grpc.health.v1.Health/Check on TARGET for SERVICE until the answer is WANT or SECONDS
have passed, then prints the last answer (SERVING, NOT_SERVING, ... or the RPC error's
code) on one line.

Usage: python3 grpc_health_check.py HOST:PORT SERVICE WANT SECONDS
"""
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

target, service, want, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
deadline = time.monotonic() + seconds
while True:
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        seen = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as e:
        seen = e.code().name
    if seen == want or time.monotonic() > deadline:
        break
    time.sleep(0.05)
print(seen, flush=True)
