-- name: coverage
-- purpose: Code coverage per module: how many distinct blocks and instruction addresses ran in each loaded image.
-- columns: pid, module, kind, unique_blocks, unique_pcs, executed_insns
--   module '?' collects code that lies outside every known image (JIT, vdso).
-- example: cannoli query app.cannoli coverage
--
-- A process that exec'd ran several program images one after another: each
-- `threads` row is one image of a thread, and its modules are those of the
-- process's latest image that began at or before the row's first instruction.
WITH runs_of AS (
    SELECT t.tid, t.pid, t.first_idx, t.last_idx,
           (SELECT max(m.image_idx) FROM modules m WHERE m.pid = t.pid AND m.image_idx <= t.first_idx) AS image
    FROM threads t
    WHERE t.first_idx IS NOT NULL
),
runs AS (
    SELECT e.block_id, e.pc AS block_pc, r.pid, r.image, sum(e.icount) AS insns
    FROM exec e JOIN runs_of r ON r.tid = e.tid AND e.idx BETWEEN r.first_idx AND r.last_idx
    GROUP BY ALL
),
pcs AS (
    SELECT DISTINCT bi.pc, r.block_pc, r.pid, r.image FROM runs r JOIN block_insns bi USING (block_id)
),
placed AS (
    SELECT p.pc, p.block_pc, p.pid, coalesce(m.path, '?') AS module, coalesce(m.kind, '?') AS kind
    FROM pcs p
    LEFT JOIN modules m ON m.pid = p.pid AND m.image_idx IS NOT DISTINCT FROM p.image
                       AND p.pc >= m.start AND p.pc < m."end"
),
executed AS (
    SELECT coalesce(m.path, '?') AS module, r.pid, sum(r.insns) AS executed_insns
    FROM runs r
    LEFT JOIN modules m ON m.pid = r.pid AND m.image_idx IS NOT DISTINCT FROM r.image
                       AND r.block_pc >= m.start AND r.block_pc < m."end"
    GROUP BY ALL
)
SELECT p.pid, p.module, p.kind, count(DISTINCT p.block_pc) AS unique_blocks, count(DISTINCT p.pc) AS unique_pcs,
       x.executed_insns
FROM placed p
JOIN executed x ON x.module = p.module AND x.pid = p.pid
GROUP BY p.pid, p.module, p.kind, x.executed_insns
ORDER BY p.pid, executed_insns DESC
