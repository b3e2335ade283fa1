"""The Python mirror of the record format (cannoli_db/format.py) agrees with the
C headers it mirrors (qemu_patches/cannoli_format.h, cannoli_ring.h): a probe
compiled against the headers prints every struct size and field offset, and
the value of every `CN_` constant the headers define -- found by reading the
headers, so a constant added there without its Python twin fails here."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from cannoli_db import format as F

HEADERS = Path(__file__).parent.parent / "qemu_patches"
HEADER_FILES = ("cannoli_format.h", "cannoli_ring.h")

STRUCTS = {
    "cn_event": F.EVENT_DTYPE,
    "cn_block": F.BLOCK_DTYPE,
    "cn_line": F.LINE_DTYPE,
    "cn_packet_header": F.PACKET_HEADER_DTYPE,
    "cn_chunk_header": F.CHUNK_HEADER_DTYPE,
    "cn_ring_header": F.RING_HEADER_DTYPE,
    "cn_lane_header": F.LANE_HEADER_DTYPE,
}


def header_constants() -> tuple[set[str], set[str]]:
    """(numeric, string) CN_ constants: object-like #defines and enum members."""
    numeric, strings = set(), set()
    for name in HEADER_FILES:
        text = (HEADERS / name).read_text()
        for match in re.finditer(r"^#define (CN_\w+)[ \t]+(\S.*)$", text, re.M):
            (strings if match[2].startswith('"') else numeric).add(match[1])
        for body in re.findall(r"enum \w+ \{(.*?)\};", text, re.S):
            numeric.update(re.findall(r"\b(CN_[A-Z0-9_]+)\b\s*(?:=|,|$)", re.sub(r"/\*.*?\*/", "", body, flags=re.S),
                                      re.M))
    return numeric, strings


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict[str, str]:
    numeric, strings = header_constants()
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "cannoli_ring.h"', "int main(void) {"]
    for struct, dtype in STRUCTS.items():
        lines.append(f'printf("sizeof {struct} %zu\\n", sizeof(struct {struct}));')
        for field in dtype.names:
            lines.append(f'printf("offsetof {struct}.{field} %zu\\n", offsetof(struct {struct}, {field}));')
    for name in sorted(numeric):
        lines.append(f'printf("const {name} %llu\\n", (unsigned long long)({name}));')
    for name in sorted(strings):
        lines.append(f'printf("magic {name} %s\\n", {name});')
    lines += ["return 0; }"]
    tmp = tmp_path_factory.mktemp("probe")
    src, exe = tmp / "probe.c", tmp / "probe"
    src.write_text("\n".join(lines))
    subprocess.run(["cc", "-I", str(HEADERS), "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    facts = {}
    for line in out.splitlines():
        kind, key, value = line.split(" ", 2)
        facts[f"{kind} {key}"] = value
    return facts


@pytest.mark.parametrize("struct", STRUCTS)
def test_struct_layout_agrees(probe, struct):
    dtype = STRUCTS[struct]
    assert int(probe[f"sizeof {struct}"]) == dtype.itemsize
    for field in dtype.names:
        assert int(probe[f"offsetof {struct}.{field}"]) == dtype.fields[field][1], field


def test_every_header_constant_has_its_twin(probe):
    numeric, strings = header_constants()
    assert len(numeric) > 60, "the header scan found too few constants: the regexes broke"
    for name in sorted(numeric):
        twin = name.removeprefix("CN_")
        assert hasattr(F, twin), f"{name} has no twin format.{twin}"
        assert int(probe[f"const {name}"]) == getattr(F, twin), name
    for name in sorted(strings):
        assert probe[f"magic {name}"].encode() == getattr(F, name.removeprefix("CN_")), name


def test_section_tables_cover_every_section():
    assert len(F.SECTION_DTYPES) == len(F.SECTION_CAPACITY) == len(F.SECTION_NAMES) == F.NSECTIONS
    assert sorted(F.SIDE + F.HEAVY) == list(range(F.NSECTIONS))
