"""The listening socket `serve_http` binds: its accepted connections must send small answers at once."""

from __future__ import annotations

import asyncio
import socket

from services.common.server import listen_socket


def test_accepted_connections_have_nagle_off() -> None:
    """asyncio turns TCP_NODELAY on only for sockets whose `proto` is TCP; with proto 0 every small
    answer waited for the client's delayed ACK (~40 ms a request)."""

    async def accepted_nodelay() -> int:
        sock = listen_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                peer = transport.get_extra_info("socket")
                seen.set_result(peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            result = await asyncio.wait_for(seen, 5)
            writer.close()
        return result

    assert asyncio.run(accepted_nodelay()) != 0
