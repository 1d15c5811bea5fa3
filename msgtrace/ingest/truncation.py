"""The cap on one value's size (``max_attribute_value_bytes``): :class:`Truncator` cuts what is longer and marks it.

A value over the cap keeps its first ``limit`` bytes and ends with a marker saying how much was kept, e.g.
``…[truncated by msgtrace: 1048576 of 5242880 bytes kept]``; the span itself is always kept, and the response's
``partial_success`` counts the cuts. The cap is in bytes for strings too (their UTF-8 length), cut on a character
boundary: counted in characters, a 5 MiB string of 4-byte characters (emoji, many CJK scripts) kept 4 MiB under a
1 MiB cap.
"""

from __future__ import annotations

MARKER = "…[truncated by msgtrace: {kept} of {total} bytes kept]"
_UTF8_MAX = 4  # bytes per character at most: a string of at most limit // 4 characters always fits


class Truncator:
    """Cuts a string or bytes value longer than ``limit`` bytes and marks it (the span is never dropped); counts
    the cuts in ``count``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._always_fits = limit // _UTF8_MAX

    def __call__(self, value):  # type: ignore[no-untyped-def]
        limit = self.limit
        if value is None or len(value) <= self._always_fits:
            return value
        if isinstance(value, bytes):
            if len(value) <= limit:
                return value
            self.count += 1
            return value[:limit] + MARKER.format(kept=limit, total=len(value)).encode()
        # Only strings longer than limit / 4 characters are encoded to be measured (rare: prompts of 256 K+).
        # "surrogatepass" measures a lone surrogate (which JSON can escape) instead of raising on it.
        raw = value.encode("utf-8", "surrogatepass")
        if len(raw) <= limit:
            return value
        self.count += 1
        head = raw[:limit].decode("utf-8", "ignore")  # drops only a character split by the cut
        return head + MARKER.format(kept=len(head.encode("utf-8", "surrogatepass")), total=len(raw))

    def many(self, values):  # type: ignore[no-untyped-def]
        """``values`` with every over-long one cut; the same list when none can be (the common case, checked in C)."""
        if not values or max(map(len, values)) <= self._always_fits:
            return values
        return [self(v) for v in values]
