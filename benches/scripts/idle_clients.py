"""RSS per client connection of a running HTTP server, from /proc.

Usage: python3 idle_clients.py PID HOST:PORT N MODE

Opens N connections to HOST:PORT (loopback) and reads the server process PID's RSS
before and after, once it has stopped growing. MODE:
  idle        connect and send nothing;
  stalled     send half a request head and stop;
  kept-alive  send one whole request, read its response, then stay idle (all N
              requests are sent before any response is read: a burst of N at once);
  one-by-one  the same, one connection at a time (each response read before the next
              connection opens, so at most one request is in flight).
Prints the RSS before and after and the KiB per connection, then closes them all.
"""
import resource
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def settled(pid, limit=30.0):
    """The RSS once two readings 0.5 s apart agree (at most `limit` seconds)."""
    deadline = time.monotonic() + limit
    last = rss_kib(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_kib(pid)
        if now == last:
            return now
        last = now
    return last


def read_head(s):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("the server closed a connection")
        head += chunk


def main():
    pid, target, n, mode = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    host, port = target.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("loopback only")
    if mode not in ("idle", "stalled", "kept-alive", "one-by-one"):
        sys.exit("MODE: idle, stalled, kept-alive or one-by-one")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    before = settled(pid)
    conns = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        if mode == "stalled":
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nX-Half: ")
        elif mode in ("kept-alive", "one-by-one"):
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            if mode == "one-by-one":
                read_head(s)
        conns.append(s)
    if mode == "kept-alive":
        for s in conns:
            read_head(s)
    after = settled(pid)
    print(f"{mode}: {n} connections, RSS {before} KiB -> {after} KiB, "
          f"{(after - before) / n:.1f} KiB per connection")
    for s in conns:
        s.close()


if __name__ == "__main__":
    main()
