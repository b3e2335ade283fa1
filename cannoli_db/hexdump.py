"""Hexdump of partly known memory: 16 bytes a line, '??' for unknown bytes."""

from __future__ import annotations

from typing import Sequence


def hexdump(addr: int, values: Sequence[int | None], width: int = 16) -> str:
    lines = []
    for off in range(0, len(values), width):
        row = values[off: off + width]
        cells = " ".join("??" if v is None else f"{v:02x}" for v in row)
        text = "".join("." if v is None or not 0x20 <= v < 0x7F else chr(v) for v in row)
        lines.append(f"{addr + off:#018x}  {cells:<{width * 3 - 1}}  |{text}|")
    return "\n".join(lines)
