"""An HTTPS server on Python's http.server and ssl modules (OpenSSL), ALPN http/1.1.

Usage: python3 tls_server.py CERT KEY [--client-ca FILE] [--log FILE] [--name NAME]

Prints "PORT <n>" once listening on 127.0.0.1. Every request is answered
"<name> <path> sni=<server name or ->" and, with --log, appended to the log file as a
line "REQUEST <method> <path> sni=<...>"; failed handshakes are logged as
"HANDSHAKE-FAILED <reason>". With --client-ca, clients must present a certificate
signed by that CA.
"""
import argparse
import http.server
import ssl
import sys
import threading

parser = argparse.ArgumentParser()
parser.add_argument("cert")
parser.add_argument("key")
parser.add_argument("--client-ca")
parser.add_argument("--log")
parser.add_argument("--name", default="python-tls")
args = parser.parse_args()

log_lock = threading.Lock()


def log(line):
    if args.log:
        with log_lock, open(args.log, "a") as f:
            f.write(line + "\n")


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(args.cert, args.key)
context.set_alpn_protocols(["http/1.1"])
if args.client_ca:
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(args.client_ca)


def remember_sni(sock, name, _context):
    sock.sni = name


context.sni_callback = remember_sni


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        sni = getattr(self.connection, "sni", None) or "-"
        log(f"REQUEST {self.command} {self.path} sni={sni}")
        body = f"{args.name} {self.path} sni={sni}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        # What a proxy in front said about the client's connection.
        self.send_header("X-Seen-Forwarded-Proto", self.headers.get("X-Forwarded-Proto", "-"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def finish_request(self, request, client_address):
        # The handshake runs in the connection's thread, so a slow or failing client
        # does not hold up the accept loop.
        try:
            tls = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            log(f"HANDSHAKE-FAILED {e}")
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        except (ssl.SSLError, OSError) as e:
            log(f"CONNECTION-FAILED {e}")
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        print(f"tls_server: error from {client_address}: {sys.exc_info()[1]}", file=sys.stderr)


server = Server(("127.0.0.1", 0), Handler)
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()
