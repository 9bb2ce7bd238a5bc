#!/usr/bin/env python3
"""A TCP proxy that holds every chunk DELAY seconds in each direction: a registry on this machine
seen as if it were 2*DELAY of round trip away (a remote registry, without root or netem).

    python3 benches/delay_proxy.py LISTEN_PORT UPSTREAM_PORT DELAY_SECONDS

Used to measure what a round trip costs a code-only push (README, "Where the time goes"): point
`--image` at 127.0.0.1:LISTEN_PORT and the base at the registry itself.
"""
import asyncio
import sys

LISTEN, UPSTREAM, DELAY = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])


async def pipe(reader, writer):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def forward():
        while True:
            at, data = await queue.get()
            wait = at + DELAY - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(forward())
    while True:
        data = await reader.read(65536)
        queue.put_nowait((loop.time(), data))
        if not data:
            break
    await task


async def handle(client_reader, client_writer):
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", UPSTREAM)
    await asyncio.gather(
        pipe(client_reader, up_writer), pipe(up_reader, client_writer), return_exceptions=True
    )


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN)
    async with server:
        await server.serve_forever()


asyncio.run(main())
