-- name: registers_at
-- purpose: The registers of the thread running a position at the ENTRY of the block that holds it, as recorded (QEMU >= 9.0 traces; see meta.regs_unavailable otherwise), plus that instruction's own pc. Trace.registers_at re-executes the block from these for the exact values at the position (docs/reexec.md).
-- param at: integer            a position (idx)
-- columns: tid, n, reg, value, block_start, set_at
--   tid: the thread that ran position at; n/reg: register number and name
--   (pc comes last, as n = 255); value: its value at block_start, the entry
--   of the block holding position at (pc: the pc of position at itself);
--   set_at: the block entry where that value was recorded (the latest change).
-- example: cannoli query app.cannoli registers_at -p at=120000
--
-- Registers are recorded at block entry, as changes: a register's value at a
-- block entry is its latest change at or before it in the same thread.
WITH here AS (
    SELECT e.idx AS block_start, e.tid, e.block_id
    FROM exec e
    WHERE e.idx <= $at::UBIGINT AND e.idx >= greatest($at::UBIGINT, 511) - 511
      AND $at::UBIGINT < e.idx + e.icount
),
latest AS (
    SELECT here.tid, r.n, r.reg, arg_max(r.value, r.idx) AS value, here.block_start, max(r.idx) AS set_at
    FROM here JOIN regs r ON r.tid = here.tid AND r.idx <= here.block_start
    GROUP BY ALL
)
SELECT * FROM latest
UNION ALL
SELECT here.tid, 255, 'pc', bi.pc, here.block_start, $at::UBIGINT
FROM here JOIN block_insns bi ON bi.block_id = here.block_id AND bi.n = $at::UBIGINT - here.block_start
ORDER BY n
