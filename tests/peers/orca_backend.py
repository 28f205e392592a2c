"""An HTTP backend that reports its load as gRPC does: every response carries
`endpoint-load-metrics-bin`, the base64 of an `xds.data.orca.v3.OrcaLoadReport` built and
serialized by Google's `protobuf` package (the message type is declared at run time from
a descriptor, with the field numbers of cncf/xds `orca_load_report.proto`).

Usage: orca_backend.py CPU_UTILIZATION RPS_FRACTIONAL [APPLICATION_UTILIZATION]
Prints `PORT <n>` once listening on 127.0.0.1. The body of every answer is the port.
"""

import base64
import http.server
import socketserver
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto


def orca_message_class():
    file = descriptor_pb2.FileDescriptorProto(
        name="orca_load_report_peer.proto", package="xds.data.orca.v3", syntax="proto3"
    )
    msg = file.message_type.add(name="OrcaLoadReport")
    for name, number, kind in [
        ("cpu_utilization", 1, F.TYPE_DOUBLE),
        ("mem_utilization", 2, F.TYPE_DOUBLE),
        ("rps", 3, F.TYPE_UINT64),
        ("rps_fractional", 6, F.TYPE_DOUBLE),
        ("eps", 7, F.TYPE_DOUBLE),
        ("application_utilization", 9, F.TYPE_DOUBLE),
    ]:
        msg.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
    for name, number, entry in [
        ("request_cost", 4, "RequestCostEntry"),
        ("utilization", 5, "UtilizationEntry"),
        ("named_metrics", 8, "NamedMetricsEntry"),
    ]:
        e = msg.nested_type.add(name=entry)
        e.options.map_entry = True
        e.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
        e.field.add(name="value", number=2, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
        msg.field.add(
            name=name,
            number=number,
            type=F.TYPE_MESSAGE,
            label=F.LABEL_REPEATED,
            type_name=".xds.data.orca.v3.OrcaLoadReport." + entry,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("xds.data.orca.v3.OrcaLoadReport")
    )


def main():
    cpu = float(sys.argv[1])
    rps = float(sys.argv[2])
    app = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    report = orca_message_class()(
        cpu_utilization=cpu,
        mem_utilization=0.5,
        rps=7,
        rps_fractional=rps,
        eps=0.25,
        application_utilization=app,
    )
    report.named_metrics["queue"] = 12.5
    report.utilization["disk"] = 0.125
    report.request_cost["db_ms"] = 3.0
    header = base64.b64encode(report.SerializeToString()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go in two writes: without this, delayed ACKs stall each answer.
        disable_nagle_algorithm = True

        def do_GET(self):
            body = str(self.server.server_address[1]).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.send_header("endpoint-load-metrics-bin", header)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
