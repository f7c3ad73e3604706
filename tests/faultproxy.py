"""A TCP proxy between the tests and PostgreSQL that can fail on purpose.

Tests must not stop this machine's PostgreSQL (other work uses it), so they put this
proxy in front of it and break the proxy instead. From a client's side the faults look
like the real ones:

- ``down()``: every open connection is cut and new ones are refused (ECONNREFUSED), as
  when the database restarts or its host is down; ``up()`` listens again on the same port.
- ``stall()``: connections are accepted and data is swallowed, nothing comes back, as
  with a network that drops packets; ``unstall()`` ends it (for new connections).
- ``latency_s``: every chunk is forwarded this much later (a slow network).

Real sockets and threads; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

__all__ = ["FaultProxy", "fault_proxy"]


class FaultProxy:
    """Forward 127.0.0.1:<port> to ``upstream``; see the module docstring."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.latency_s = 0.0
        self.connections = 0  # accepted so far
        self._stalled = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = self._listen(0)

    def _listen(self, port: int) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return int(listener.getsockname()[1])

    def url(self, database: str = "test", **params: str) -> str:
        query = "&".join(f"{key}={value}" for key, value in params.items())
        return f"postgresql://127.0.0.1:{self.port}/{database}" + (f"?{query}" if query else "")

    # -- faults ------------------------------------------------------------------------------
    def down(self) -> None:
        """Refuse new connections and cut every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            open_sockets, self._sockets = list(self._sockets), set()
        if listener is not None:
            with contextlib.suppress(OSError):  # wakes the accepting thread (close alone
                listener.shutdown(socket.SHUT_RDWR)  # would leave the port listening)
            listener.close()
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def up(self) -> None:
        """Listen again, on the same port."""
        with self._lock:
            if self._listener is not None:
                return
        self._listen(self.port)

    def stall(self) -> None:
        """Accept connections but never answer on them (new connections only)."""
        self._stalled = True

    def unstall(self) -> None:
        self._stalled = False

    def close(self) -> None:
        self.down()

    # -- forwarding --------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by down()
                return
            self.connections += 1
            if self._stalled:
                self._track(client)  # held open, never read: the client waits
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5.0)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._track(client, server)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _track(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._sockets.update(sockets)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                if self.latency_s:
                    time.sleep(self.latency_s)
                sink.sendall(chunk)
        except OSError:
            pass  # the other side closed, or down() cut both: end this direction
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def fault_proxy(upstream: tuple[str, int] = ("127.0.0.1", 5432)) -> Iterator[FaultProxy]:
    """A running :class:`FaultProxy`, closed afterwards."""
    proxy = FaultProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()
