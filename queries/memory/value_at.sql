-- name: value_at
-- purpose: Memory [addr, addr + size) as known at a position, one row per byte: the byte value from the latest access (write, or read) that covers it, NULL when no access before the position saw that byte.
-- param addr: address        first byte (hex, decimal, or symbol+offset)
-- param size: integer = 8    number of bytes (1 to 1048576)
-- param at: integer = null   position: accesses at positions < at count, and reads at `at` itself (they show the memory the instruction found); default: the end of the trace
-- columns: byte_addr, value, idx, pc, is_write
--   byte_addr: the byte's address; value: the byte (0-255) or NULL if unknown;
--   idx/pc/is_write: the access it comes from.
-- example: cannoli query app.cannoli value_at -p addr=0x4c6f00 -p size=16 -p at=50000
-- window: latest accesses
--
-- Memory written by the kernel (read(2), mmap of a file) is only known once a
-- guest instruction accessed it.
WITH cand AS (
    SELECT idx, pc, addr, size, is_write, value
    FROM mem_window
    WHERE touches(addr, size, $addr, $size)
      AND (idx < or_end($at)
           OR (idx = $at::UBIGINT AND NOT is_write))
),
per_byte AS (
    SELECT idx, pc, addr, is_write, value, unnest(range(least(size, 8)::BIGINT)) AS k FROM cand
),
latest AS (
    SELECT addr + k AS byte_addr, (value >> (8 * k)::UTINYINT) & 255 AS value, idx, pc, is_write
    FROM per_byte
    WHERE addr + k BETWEEN $addr::UBIGINT AND $addr::UBIGINT + $size - 1
    QUALIFY row_number() OVER (PARTITION BY addr + k ORDER BY idx DESC, is_write DESC) = 1
)
SELECT b.byte_addr, l.value::UTINYINT AS value, l.idx, l.pc, l.is_write
FROM (SELECT $addr::UBIGINT + r AS byte_addr FROM range(0::BIGINT, $size::BIGINT) t(r)) b
LEFT JOIN latest l USING (byte_addr)
ORDER BY b.byte_addr
