"""A gRPC client on gRPC's C core (grpcio): runs every call shape of grpc_server.py
against TARGET and prints one JSON object with what it saw.

Usage: python3 grpc_client.py HOST:PORT
"""
import json
import sys

import grpc

target = sys.argv[1]
channel = grpc.insecure_channel(target)
out = {}


def served_by(call):
    return dict(call.trailing_metadata() or ()).get("x-served-by")


unary = channel.unary_unary("/test.Echo/Unary")
served = []
for i in range(20):
    reply, call = unary.with_call(b"ping-%d" % i, timeout=20)
    assert reply == b"unary:" + served_by(call).encode() + b":ping-%d" % i, reply
    served.append(served_by(call))
out["unary_served_by"] = served

stream = channel.unary_stream("/test.Echo/ServerStream")
call = stream(b"5", timeout=20)
messages = [m.decode() for m in call]
out["server_stream"] = messages
out["server_stream_trailer"] = served_by(call)

upload = channel.stream_unary("/test.Echo/ClientStream")
chunk = b"x" * (64 * 1024)
reply, call = upload.with_call(iter([chunk] * 32), timeout=60)
out["client_stream"] = reply.decode()

fail = channel.unary_unary("/test.Echo/Fail")
try:
    fail(b"", timeout=20)
    out["fail"] = "no error"
except grpc.RpcError as e:
    out["fail"] = {
        "code": e.code().name,
        "details": e.details(),
        "served_by": dict(e.trailing_metadata() or ()).get("x-served-by"),
    }

print(json.dumps(out), flush=True)
