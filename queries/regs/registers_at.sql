-- name: registers_at
-- purpose: The registers of the thread running a position at the ENTRY of the block that holds it, as recorded (QEMU >= 9.0 traces; see meta.regs_unavailable otherwise), plus that instruction's own pc. Trace.registers_at re-executes the block from these for the exact values at the position (docs/reexec.md).
-- param at: integer            a position (idx)
-- columns: tid, n, reg, value, block_start, set_at
--   tid: the thread that ran position at; n/reg: register number and name
--   (pc comes last, as n = 255); value: its value at block_start, the entry
--   of the block holding position at (pc: the pc of position at itself);
--   set_at: the block entry where that value was last recorded (a change, or
--   the keyframe the thread's segment starts with).
-- example: cannoli query app.cannoli registers_at -p at=120000
-- window: registers
--
-- Registers are recorded at block entry as changes, and in full (a keyframe,
-- table regs_keys) at the first block of every ordering segment.  A segment
-- holds at most 1024 blocks of at most 512 instructions, in consecutive
-- positions, so the keyframe lies at most 2^19 positions before the block:
-- `window: registers` hands this query the thread's rows of that reach
-- (here_window, regs_window, regs_keys_window; query/named.py).
WITH here AS (
    SELECT idx - n AS block_start, tid, block_id, pc FROM here_window
),
keyframe AS (
    SELECT here.tid, here.block_start, max(k.idx) AS key_idx
    FROM here JOIN regs_keys_window k ON k.tid = here.tid AND k.idx <= here.block_start
    WHERE keyframe_reach(k.idx, $at)
    GROUP BY ALL
),
recorded AS (
    SELECT k.n, k.value, k.idx FROM keyframe f JOIN regs_keys_window k ON k.tid = f.tid AND k.idx = f.key_idx
    UNION ALL
    SELECT r.n, r.value, r.idx FROM keyframe f JOIN regs_window r ON r.tid = f.tid AND r.idx > f.key_idx
        AND r.idx <= f.block_start
),
latest AS (
    SELECT f.tid, c.n, rn.reg, arg_max(c.value, c.idx) AS value, f.block_start, max(c.idx) AS set_at
    FROM recorded c CROSS JOIN keyframe f JOIN reg_names rn ON rn.n = c.n
    GROUP BY ALL
)
SELECT * FROM latest
UNION ALL
SELECT tid, 255, 'pc', pc, block_start, $at::UBIGINT FROM here
ORDER BY n
