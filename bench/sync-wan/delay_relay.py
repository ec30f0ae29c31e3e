#!/usr/bin/env python3
"""A TCP relay that holds every chunk DELAY_MS before passing it on, both
ways: latency on loopback for kernels without netem (as ferry-rehearse's
delay relays do). Usage: delay_relay.py LISTEN_PORT TARGET_PORT DELAY_MS.
Listens on 127.0.0.1 only; prints "ready" once listening. At most 256
chunks of 64 KiB are held per direction and connection."""
import asyncio
import sys

CHUNK = 64 * 1024
IN_FLIGHT = 256


async def pump(reader, writer, delay):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue(IN_FLIGHT)

    async def read():
        while True:
            data = await reader.read(CHUNK)
            await queue.put((loop.time() + delay, data))
            if not data:
                return

    async def write():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except OSError:
            pass

    try:
        await asyncio.gather(read(), write())
    except (ConnectionError, OSError):
        writer.close()


async def main():
    listen, target, delay_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    delay = delay_ms / 1000.0

    async def handle(cr, cw):
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            cw.close()
            return
        for w in (cw, sw):
            sock = w.get_extra_info("socket")
            if sock is not None:
                import socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pump(cr, sw, delay), pump(sr, cw, delay))
        for w in (cw, sw):
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
