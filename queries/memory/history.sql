-- name: history
-- purpose: Every access (read or write) that touches [addr, addr + size) in a window of positions, in trace order: the life of a variable.
-- param addr: address        first byte (hex, decimal, or symbol+offset)
-- param size: integer = 8    number of bytes
-- param from: integer = 0    first position of the window
-- param to: integer = null   end of the window, exclusive (default: the end of the trace)
-- param limit: integer = 1000  at most this many rows
-- columns: idx, tid, pc, kind, addr, size, value
--   kind: 'write' or 'read'.
-- example: cannoli query app.cannoli history -p addr=counter -p size=8 --format csv
-- window: earliest accesses
WITH cand AS (
    SELECT idx, tid, pc, CASE WHEN is_write THEN 'write' ELSE 'read' END AS kind, addr, size, value
    FROM mem_window
    WHERE touches(addr, size, $addr, $size)
      AND idx >= $from::UBIGINT
      AND idx < or_end($to)
)
SELECT * FROM cand ORDER BY idx, kind, addr LIMIT $limit
