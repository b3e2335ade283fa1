-- name: who_read
-- purpose: Reads that touch any byte of [addr, addr + size) in a window of positions, in trace order.
-- param addr: address        first byte (hex, decimal, or symbol+offset)
-- param size: integer = 1    number of bytes
-- param from: integer = 0    first position of the window
-- param to: integer = null   end of the window, exclusive (default: the end of the trace)
-- param limit: integer = 1000  at most this many rows
-- columns: idx, tid, pc, addr, size, value
-- example: cannoli query app.cannoli who_read -p addr=config -p size=4
-- window: earliest reads
WITH cand AS (
    SELECT idx, tid, pc, addr, size, value
    FROM mem_window
    WHERE NOT is_write
      AND touches(addr, size, $addr, $size)
      AND idx >= $from::UBIGINT
      AND idx < or_end($to)
)
SELECT * FROM cand ORDER BY idx, addr LIMIT $limit
