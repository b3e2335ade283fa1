-- name: first_last
-- purpose: First and last execution of the instruction at a pc, per thread, and how often it ran.
-- param pc: address          instruction address (hex, decimal, or symbol+offset)
-- columns: tid, first_idx, last_idx, executions
-- example: cannoli query app.cannoli first_last -p pc=main
SELECT tid, min(idx) AS first_idx, max(idx) AS last_idx, count(*) AS executions
FROM insns
WHERE pc = $pc::UBIGINT
GROUP BY tid
ORDER BY first_idx
