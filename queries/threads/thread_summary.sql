-- name: thread_summary
-- purpose: One row per thread: its process, span of positions, instructions, blocks, memory accesses and syscalls.
-- columns: pid, tid, parent_pid, first_idx, last_idx, insns, blocks, reads, writes, syscalls, exited
-- example: cannoli query app.cannoli thread_summary --format json
WITH m AS (
    SELECT tid, count(*) FILTER (WHERE NOT is_write) AS reads, count(*) FILTER (WHERE is_write) AS writes
    FROM mem GROUP BY tid
),
s AS (SELECT tid, count(*) AS syscalls FROM syscalls GROUP BY tid)
SELECT t.pid, t.tid, t.parent_pid, t.first_idx, t.last_idx, t.insns, t.blocks,
       coalesce(m.reads, 0) AS reads, coalesce(m.writes, 0) AS writes, coalesce(s.syscalls, 0) AS syscalls, t.exited
FROM threads t
LEFT JOIN m USING (tid)
LEFT JOIN s USING (tid)
ORDER BY t.first_idx NULLS LAST, t.tid
