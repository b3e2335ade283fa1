-- name: hot_blocks
-- purpose: The most executed blocks, by executions and by instructions they account for.
-- param limit: integer = 20  rows to show
-- columns: pc, icount, executions, instructions, share
--   pc: the block's first instruction; icount: its instructions (a twin counts
--   separately: the block was cut short); share: fraction of all instructions.
-- example: cannoli query app.cannoli hot_blocks -p limit=10
WITH per_block AS (
    SELECT pc, icount, count(*) AS executions, sum(icount) AS instructions
    FROM exec
    GROUP BY pc, icount
)
SELECT pc, icount, executions, instructions,
       round(instructions / (SELECT greatest(sum(icount), 1) FROM exec), 6) AS share
FROM per_block
ORDER BY instructions DESC, pc
LIMIT $limit
