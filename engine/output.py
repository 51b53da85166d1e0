"""What happens to a job's output on the host: secret masking, decoding, truncation markers.

The agent already capped each stream at `max_output` bytes inside the container; here the bytes
are masked (also when a secret is split across chunks), decoded as UTF-8 with replacement (never
an exception), and marked once when they were cut.
"""

from __future__ import annotations

import codecs

MASK = b"***"
TIMEOUT_MARKER = "--- EXECUTION TIMED OUT ---"


def truncation_marker(total: int, limit: int) -> str:
    return f"\n--- OUTPUT TRUNCATED ({total} bytes, limit: {limit}) ---\n"


class Masker:
    """Replaces every secret value by `***` in a stream that arrives in arbitrary chunks.

    Only the shortest tail that could still grow into a secret is held back, so ordinary output
    streams through without delay.
    """

    def __init__(self, secrets: list[str]) -> None:
        values = {value.encode() for value in secrets if value}
        self._secrets = sorted(values, key=len, reverse=True)
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self._secrets:
            return chunk
        data = self._replace(self._pending + chunk)
        hold = self._partial_tail(data)
        self._pending = data[len(data) - hold :] if hold else b""
        return data[: len(data) - hold]

    def flush(self, cut: bool = False) -> bytes:
        """The held-back tail at the end of the stream. When the stream was `cut` at the output
        cap, that tail is the start of a secret the cap split, so it is masked too."""
        data, self._pending = self._pending, b""
        return MASK if data and cut else data

    def mask_text(self, text: str) -> str:
        data = self._replace(text.encode())
        return data.decode(errors="replace")

    def _replace(self, data: bytes) -> bytes:
        for secret in self._secrets:
            data = data.replace(secret, MASK)
        return data

    def _partial_tail(self, data: bytes) -> int:
        longest = min(len(data), max(len(s) for s in self._secrets) - 1)
        for size in range(longest, 0, -1):
            tail = data[-size:]
            if any(secret.startswith(tail) for secret in self._secrets):
                return size
        return 0


class StreamText:
    """One output stream: masking then incremental UTF-8 decoding (errors replaced)."""

    def __init__(self, secrets: list[str]) -> None:
        self.masker = Masker(secrets)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes) -> str:
        return self._decoder.decode(self.masker.feed(chunk))

    def finish(self, cut: bool = False) -> str:
        return self._decoder.decode(self.masker.flush(cut), final=True)
