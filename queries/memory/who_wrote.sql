-- name: who_wrote
-- purpose: The last write to each byte of [addr, addr + size) before a position: one row per write that is still visible, with the bytes it is last for.
-- param addr: address        first byte (hex, decimal, or symbol+offset)
-- param size: integer = 1    number of bytes to look at (1 to 1048576)
-- param before: integer = null  only writes at positions < before count (default: the end of the trace)
-- columns: idx, tid, pc, addr, size, value, first_byte, last_byte, bytes
--   idx/tid/pc: the writing instruction; addr/size/value: the write as a whole;
--   first_byte/last_byte: the part of the query range it covers (absolute addresses);
--   bytes: how many bytes of the query range it is the last write for.
-- example: cannoli query app.cannoli who_wrote -p addr=counter -p size=8 -p before=120000
-- window: latest writes
--
-- mem_window holds the accesses near the range that can answer it: the store's
-- address index names the packets (cannoli_db/query/window.py).  An access is
-- at most 8 bytes wide, so one covering byte A starts in [A - 7, A].
WITH cand AS (
    SELECT idx, tid, pc, addr, size, value
    FROM mem_window
    WHERE is_write
      AND touches(addr, size, $addr, $size)
      AND idx < or_end($before)
),
per_byte AS (
    SELECT *, addr + unnest(range(size::BIGINT)) AS byte FROM cand
),
last_write AS (
    SELECT * FROM per_byte
    WHERE byte BETWEEN $addr::UBIGINT AND $addr::UBIGINT + $size - 1
    QUALIFY row_number() OVER (PARTITION BY byte ORDER BY idx DESC) = 1
)
SELECT idx, tid, pc, addr, size, value, min(byte) AS first_byte, max(byte) AS last_byte, count(*) AS bytes
FROM last_write
GROUP BY idx, tid, pc, addr, size, value
ORDER BY first_byte, idx
