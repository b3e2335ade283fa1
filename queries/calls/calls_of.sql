-- name: calls_of
-- purpose: Every call of a function (and every entry of a signal handler): thread, positions, duration in instructions, stack depth.
-- param function: address    the function's entry (hex, decimal, or symbol); a call through a PLT stub enters the stub
-- param tid: integer = null  only this thread (default: all)
-- columns: tid, call_idx, ret_idx, end_idx, insns, depth, kind, caller_pc, parent
--   call_idx: position of the call instruction; ret_idx: of its return (NULL:
--   it never returned: unwound, longjmp'd out of, or still running at the end);
--   end_idx: its last position; insns: instructions its thread ran inside it;
--   depth: frames below it; kind: call or signal; caller_pc: the call instruction.
-- example: cannoli query app.cannoli calls_of -p function=parse_line --format csv
SELECT tid, call_idx, ret_idx, end_idx, insns, depth, kind, caller_pc, parent
FROM calls
WHERE callee_pc = $function::UBIGINT
  AND ($tid::UINTEGER IS NULL OR tid = $tid::UINTEGER)
ORDER BY call_idx, tid
