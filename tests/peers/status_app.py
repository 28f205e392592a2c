"""A backend that answers every request with one status, at once: FastAPI on uvicorn.

Usage: python3 status_app.py STATUS   (prints "PORT <n>" once listening on 127.0.0.1)
GET /hits answers how many other requests it served.
"""
import socket
import sys

import uvicorn
from fastapi import FastAPI, Response

status = int(sys.argv[1]) if len(sys.argv) > 1 else 500
app = FastAPI()
hits = 0


@app.get("/hits")
async def hit_count():
    return hits


@app.get("/{path:path}")
async def answer(path: str):
    global hits
    hits += 1
    return Response(content="fast and wrong", status_code=status)


sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
# Listening before the port is printed: connections queue until the server accepts.
sock.listen(1024)
print(f"PORT {sock.getsockname()[1]}", flush=True)
config = uvicorn.Config(app, log_level="warning")
uvicorn.Server(config).run(sockets=[sock])
