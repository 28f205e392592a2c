"""An application health endpoint as the FastAPI docs show it: named async checks, all
must pass; it answers 200 with {"status": "healthy"|"unhealthy", "checks": {...}}.

Usage: python3 health_app.py NAME   (prints "PORT <n>" once listening on 127.0.0.1)
POST /fail/{check} and /heal/{check} toggle a check; GET /hits?probe=P counts the
/health?probe=P requests; GET / answers NAME.
"""
import socket
import sys

import uvicorn
from fastapi import FastAPI, Request

name = sys.argv[1] if len(sys.argv) > 1 else "app"
app = FastAPI()
failing = set()
hits = {}


async def check(which):
    return which not in failing


@app.get("/health")
async def health(request: Request):
    probe = request.query_params.get("probe", "")
    hits[probe] = hits.get(probe, 0) + 1
    checks = {c: {"ok": await check(c)} for c in ("database", "cache", "disk")}
    healthy = all(c["ok"] for c in checks.values())
    # The common mistake this endpoint reproduces: 200 whatever the verdict.
    return {"status": "healthy" if healthy else "unhealthy", "checks": checks}


@app.post("/fail/{which}")
async def fail(which: str):
    failing.add(which)
    return {"failing": sorted(failing)}


@app.post("/heal/{which}")
async def heal(which: str):
    failing.discard(which)
    return {"failing": sorted(failing)}


@app.get("/hits")
async def hit_count(probe: str = ""):
    return hits.get(probe, 0)


@app.get("/")
async def root():
    return name


sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
# Listening before the port is printed: connections queue until the server accepts.
sock.listen(1024)
print(f"PORT {sock.getsockname()[1]}", flush=True)
config = uvicorn.Config(app, log_level="warning")
uvicorn.Server(config).run(sockets=[sock])
