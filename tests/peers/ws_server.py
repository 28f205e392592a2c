"""A WebSocket echo server on the `websockets` library (permessage-deflate offered).

Usage: python3 ws_server.py   (prints "PORT <n>" once listening on 127.0.0.1)
"""
import asyncio

from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main():
    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
