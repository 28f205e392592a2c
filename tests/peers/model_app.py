"""A model backend on FastAPI and uvicorn: every request answered with one status after
one delay.

Usage: python3 model_app.py STATUS [SECONDS]   (prints "PORT <n>" once listening on
127.0.0.1). `500` answers "fast and wrong" at once; `200 30` answers "slow" after 30 s.
GET /hits answers how many other requests it began.
"""
import asyncio
import socket
import sys

import uvicorn
from fastapi import FastAPI, Response

status = int(sys.argv[1]) if len(sys.argv) > 1 else 200
delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
body = "slow" if delay > 0 else ("fast and wrong" if status >= 400 else "fast")
app = FastAPI()
hits = 0


@app.get("/hits")
async def hit_count():
    return hits


@app.get("/{path:path}")
async def answer(path: str):
    global hits
    hits += 1
    if delay > 0:
        await asyncio.sleep(delay)
    return Response(content=body, status_code=status)


sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(1024)
print(f"PORT {sock.getsockname()[1]}", flush=True)
config = uvicorn.Config(app, log_level="warning")
uvicorn.Server(config).run(sockets=[sock])
