"""Line edits over a session description's raw lines (the Kamailio "lumps" idea, per line).

An edit set names original line indices to replace, delete, or insert new lines after; the
result is the original tuple with only those positions changed, so every untouched line
keeps its exact bytes. All indices refer to the *original* lines, so several rewrites can
be planned against one layout and applied in a single pass.
"""

from __future__ import annotations

from alg.sdp.layout import CRLF, LF


def terminator_of(line: bytes) -> bytes:
    if line[-1:] != b"\n":
        return b""
    return CRLF if line[-2:-1] == b"\r" else LF


class LineEdits:
    """A mutable edit set, local to one rewrite call (never shared, never global)."""

    __slots__ = ("_deleted", "_eol", "_inserted", "_lines", "_replaced")

    def __init__(self, lines: tuple[bytes, ...], eol: bytes) -> None:
        self._lines = lines
        self._eol = eol
        self._replaced: dict[int, bytes] = {}
        self._inserted: dict[int, list[bytes]] = {}
        self._deleted: set[int] = set()

    def replace(self, index: int, prefix: bytes, value: bytes) -> None:
        """Replace line `index` with `prefix + value`, keeping that line's own terminator."""
        line = self._lines[index]
        self._replaced[index] = prefix + value + line[len(line.rstrip(b"\r\n")) :]

    def insert_after(self, index: int, prefix: bytes, value: bytes) -> None:
        """Insert a line after original line `index` (after earlier insertions there)."""
        self._inserted.setdefault(index, []).append(prefix + value + self._eol)

    def delete(self, index: int) -> None:
        self._deleted.add(index)

    def apply(self) -> tuple[bytes, ...]:
        lines = self._lines
        if not (self._replaced or self._inserted or self._deleted):
            return lines
        out = list(lines)
        for index, line in self._replaced.items():
            out[index] = line
        if self._inserted or self._deleted:
            # Splice from the end so that earlier original indices stay valid.
            for index in sorted(self._inserted.keys() | self._deleted, reverse=True):
                inserted = self._inserted.get(index)
                if inserted:
                    out[index + 1 : index + 1] = inserted
                if index in self._deleted:
                    del out[index]
        if lines[-1][-1:] != b"\n":
            self._keep_final_line_unterminated(out)
        return tuple(out)

    def _keep_final_line_unterminated(self, out: list[bytes]) -> None:
        # The input had no terminator after its last line; the output must not gain one,
        # and a line that used to be last but now has successors must gain one.
        for position in range(len(out) - 1):
            if out[position][-1:] != b"\n":
                out[position] += self._eol
        last = out[-1]
        out[-1] = last[: len(last) - len(terminator_of(last))]
