"""A local SMTP sink for tests: just enough SMTP (RFC 5321) to take messages (EHLO, MAIL, RCPT, DATA, QUIT),
kept parsed in `messages`; serve() runs it on 127.0.0.1 from a thread."""

from __future__ import annotations

import email
import email.policy
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"220 sink ESMTP\r\n")
        while line := self.rfile.readline():
            verb = line.strip().split(b" ")[0].upper()
            if verb == b"EHLO":
                self.wfile.write(b"250 sink\r\n")
            elif verb == b"DATA":
                self.wfile.write(b"354 go ahead\r\n")
                lines = []
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(chunk[1:] if chunk.startswith(b"..") else chunk)  # dot-stuffing
                parsed = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                self.server.messages.append(parsed)  # type: ignore[attr-defined]
                self.wfile.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


class MailSink(socketserver.ThreadingTCPServer):
    daemon_threads = True
    messages: list[EmailMessage]

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.server_address[1]}"

    def wait(self, count: int = 1, timeout: float = 5.0) -> list[EmailMessage]:
        """The messages, once at least `count` arrived (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.messages)


@contextmanager
def serve() -> Iterator[MailSink]:
    sink = MailSink(("127.0.0.1", 0), _Handler)
    sink.messages = []
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.shutdown()
        sink.server_close()
