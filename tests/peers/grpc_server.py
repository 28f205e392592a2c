"""A gRPC server on gRPC's C core (grpcio), with generic handlers over raw bytes.

Usage: python3 grpc_server.py NAME   (prints "PORT <n>" once listening on 127.0.0.1)

Service test.Echo: Unary (echoes, with trailing metadata x-served-by: NAME),
ServerStream (the request is a count N: N messages), ClientStream (answers
NAME:messages:bytes), Fail (FAILED_PRECONDITION with a message).
"""
import sys
from concurrent import futures

import grpc

name = sys.argv[1] if len(sys.argv) > 1 else "grpc"


def unary(request, context):
    context.set_trailing_metadata((("x-served-by", name),))
    return b"unary:" + name.encode() + b":" + request


def server_stream(request, context):
    context.set_trailing_metadata((("x-served-by", name),))
    for i in range(int(request.decode() or "3")):
        yield f"{name}:{i}".encode()


def client_stream(requests, context):
    count = total = 0
    for chunk in requests:
        count += 1
        total += len(chunk)
    context.set_trailing_metadata((("x-served-by", name),))
    return f"{name}:{count}:{total}".encode()


def fail(request, context):
    context.set_trailing_metadata((("x-served-by", name),))
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the widget is not ready")


handlers = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
    "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
}
server = grpc.server(
    futures.ThreadPoolExecutor(max_workers=8),
    options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
)
server.add_generic_rpc_handlers(
    (grpc.method_handlers_generic_handler("test.Echo", handlers),)
)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(f"PORT {port}", flush=True)
server.wait_for_termination()
