"""A backend that answers every request after a delay: FastAPI on uvicorn.

Usage: python3 slow_app.py SECONDS   (prints "PORT <n>" once listening on 127.0.0.1)
GET /hits answers how many other requests it began.
"""
import asyncio
import socket
import sys

import uvicorn
from fastapi import FastAPI, Response

delay = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
app = FastAPI()
hits = 0


@app.get("/hits")
async def hit_count():
    return hits


@app.get("/{path:path}")
async def answer(path: str):
    global hits
    hits += 1
    await asyncio.sleep(delay)
    return Response(content="slow", status_code=200)


sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(1024)
print(f"PORT {sock.getsockname()[1]}", flush=True)
config = uvicorn.Config(app, log_level="warning")
uvicorn.Server(config).run(sockets=[sock])
