-- name: coverage
-- purpose: Code coverage per module: how many distinct blocks and instruction addresses ran in each loaded image.
-- columns: pid, module, kind, unique_blocks, unique_pcs, executed_insns
--   module '?' collects code that lies outside every known image (JIT, vdso).
-- example: cannoli query app.cannoli coverage
WITH pcs AS (
    SELECT DISTINCT bi.pc, e.block_pc, e.tid
    FROM (SELECT DISTINCT block_id, pc AS block_pc, tid FROM exec) e
    JOIN block_insns bi ON bi.block_id = e.block_id
),
placed AS (
    SELECT p.pc, p.block_pc, coalesce(m.pid, t.pid) AS pid, coalesce(m.path, '?') AS module, coalesce(m.kind, '?') AS kind
    FROM pcs p
    JOIN threads t ON t.tid = p.tid
    LEFT JOIN modules m ON m.pid = t.pid AND p.pc >= m.start AND p.pc < m."end"
),
executed AS (
    SELECT coalesce(m.path, '?') AS module, t.pid, sum(e.icount) AS executed_insns
    FROM exec e
    JOIN threads t ON t.tid = e.tid
    LEFT JOIN modules m ON m.pid = t.pid AND e.pc >= m.start AND e.pc < m."end"
    GROUP BY ALL
)
SELECT p.pid, p.module, p.kind, count(DISTINCT p.block_pc) AS unique_blocks, count(DISTINCT p.pc) AS unique_pcs,
       x.executed_insns
FROM placed p
JOIN executed x ON x.module = p.module AND x.pid = p.pid
GROUP BY p.pid, p.module, p.kind, x.executed_insns
ORDER BY p.pid, executed_insns DESC
