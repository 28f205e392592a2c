"""A WebSocket client on the `websockets` library: connects to URL, checks three echoes,
prints "OPEN", waits for a line on stdin, closes and prints "CLOSED".

Usage: python3 ws_client.py ws://HOST:PORT/path
"""
import asyncio
import sys

from websockets.asyncio.client import connect


async def main():
    async with connect(sys.argv[1], open_timeout=20) as ws:
        for text in ("one", "two", "x" * 100_000):
            await ws.send(text)
            echoed = await asyncio.wait_for(ws.recv(), 20)
            assert echoed == text, (len(echoed), len(text))
        print("OPEN", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print("CLOSED", flush=True)


asyncio.run(main())
