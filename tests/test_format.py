"""The Python mirror of the record format (cannoli_db/format.py) agrees with the
C header it mirrors (qemu_patches/cannoli_format.h, cannoli_ring.h): a probe
compiled against the headers prints every size, offset, constant and magic."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cannoli_db import format as F
from cannoli_db import tracedir
from cannoli_db.recorder.ring import RING_HEADER_DTYPE

HEADERS = Path(__file__).parent.parent / "qemu_patches"

STRUCTS = {
    "cn_event": F.EVENT_DTYPE,
    "cn_block": F.BLOCK_DTYPE,
    "cn_packet_header": F.PACKET_HEADER_DTYPE,
    "cn_chunk_header": F.CHUNK_HEADER_DTYPE,
    "cn_ring_header": RING_HEADER_DTYPE,
}

CONSTANTS = {
    "CN_FORMAT_VERSION": F.FORMAT_VERSION,
    "CN_NSECTIONS": F.NSECTIONS,
    "CN_CAP_EXEC": F.CAP_EXEC, "CN_CAP_MEM": F.CAP_MEM, "CN_CAP_EVENT": F.CAP_EVENT,
    "CN_CAP_BLOCK": F.CAP_BLOCK, "CN_CAP_INSN_SIZE": F.CAP_INSN_SIZE,
    "CN_CAP_INSN_BYTES": F.CAP_INSN_BYTES, "CN_CAP_BLOB": F.CAP_BLOB,
    "CN_MAX_BLOCK_INSNS": F.MAX_BLOCK_INSNS, "CN_MAX_BLOB_ITEM": F.MAX_BLOB_ITEM,
    "CN_MAX_CHUNK_RAW": F.MAX_CHUNK_RAW,
    "CN_MEMINFO_SHIFT_MASK": F.MEMINFO_SHIFT_MASK, "CN_MEMINFO_STORE": F.MEMINFO_STORE,
    "CN_MEMINFO_BIGENDIAN": F.MEMINFO_BIGENDIAN, "CN_MEMINFO_INSN_SHIFT": F.MEMINFO_INSN_SHIFT,
    "CN_MEMINFO_INSN_MASK": F.MEMINFO_INSN_MASK, "CN_MEMINFO_LINK_SHIFT": F.MEMINFO_LINK_SHIFT,
    "CN_EV_THREAD_START": F.EV_THREAD_START, "CN_EV_THREAD_EXIT": F.EV_THREAD_EXIT,
    "CN_EV_SYSCALL": F.EV_SYSCALL, "CN_EV_SYSRET": F.EV_SYSRET, "CN_EV_SEGMENT": F.EV_SEGMENT,
    "CN_EV_PARTIAL": F.EV_PARTIAL, "CN_EV_BLOB": F.EV_BLOB, "CN_EV_PROCESS": F.EV_PROCESS,
    "CN_BLOB_STRING": F.BLOB_STRING, "CN_BLOB_TRUNCATED": F.BLOB_TRUNCATED,
    "CN_BLOB_UNREADABLE": F.BLOB_UNREADABLE, "CN_BLOB_BUFFER": F.BLOB_BUFFER, "CN_BLOCK_TWIN": F.BLOCK_TWIN,
    "CN_PACKET_SALVAGED": F.PACKET_SALVAGED, "CN_PACKET_LAST": F.PACKET_LAST,
    "CN_SEC_EXEC": F.SEC_EXEC, "CN_SEC_MEM_ADDR": F.SEC_MEM_ADDR, "CN_SEC_MEM_VALUE": F.SEC_MEM_VALUE,
    "CN_SEC_MEM_INFO": F.SEC_MEM_INFO, "CN_SEC_EVENT": F.SEC_EVENT, "CN_SEC_BLOCK": F.SEC_BLOCK,
    "CN_SEC_INSN_SIZE": F.SEC_INSN_SIZE, "CN_SEC_INSN_BYTES": F.SEC_INSN_BYTES, "CN_SEC_BLOB": F.SEC_BLOB,
    "CN_SEC_REG_VALUE": F.SEC_REG_VALUE, "CN_SEC_REG_INFO": F.SEC_REG_INFO, "CN_CAP_REG": F.CAP_REG,
    "CN_REGINFO_NUMBER_MASK": F.REGINFO_NUMBER_MASK, "CN_REGINFO_LINK_SHIFT": F.REGINFO_LINK_SHIFT,
    "CN_MAX_REGS": F.MAX_REGS, "CN_EV_REG_NAME": F.EV_REG_NAME,
    "CN_REGS_RECORDED": tracedir.REGS_RECORDED, "CN_REGS_NO_API": tracedir.REGS_NO_API,
}

MAGICS = {"CN_CHUNK_MAGIC": F.CHUNK_MAGIC, "CN_PACKET_MAGIC": F.PACKET_MAGIC, "CN_RING_MAGIC": F.RING_MAGIC}


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict[str, int | str]:
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "cannoli_ring.h"', "int main(void) {"]
    for struct, dtype in STRUCTS.items():
        lines.append(f'printf("sizeof {struct} %zu\\n", sizeof(struct {struct}));')
        for field in dtype.names:
            lines.append(f'printf("offsetof {struct}.{field} %zu\\n", offsetof(struct {struct}, {field}));')
    for name in CONSTANTS:
        lines.append(f'printf("const {name} %llu\\n", (unsigned long long)({name}));')
    for name in MAGICS:
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


def test_constants_agree(probe):
    for name, value in CONSTANTS.items():
        assert int(probe[f"const {name}"]) == value, name


def test_magics_agree(probe):
    for name, value in MAGICS.items():
        assert probe[f"magic {name}"].encode() == value, name


def test_section_tables_cover_every_section():
    assert len(F.SECTION_DTYPES) == len(F.SECTION_CAPACITY) == len(F.SECTION_NAMES) == F.NSECTIONS
