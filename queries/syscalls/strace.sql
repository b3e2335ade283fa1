-- name: strace
-- purpose: The syscalls in order, rendered as strace(1) prints them: name(args) = result, with flags, strings, structs and errors by name.
-- param tid: integer = null  only this thread (default: all)
-- param limit: integer = 100000  at most this many rows
-- columns: idx, tid, call
--   call: e.g. openat(AT_FDCWD, "/etc/hostname", O_RDONLY|O_CLOEXEC) = 3, or = -1 ENOENT (No such file or directory).
--   Rendered once, at index time, by cannoli_db/syscall_render.py (see docs/schema.md, syscalls.call).
-- example: cannoli query app.cannoli strace --format csv
SELECT idx, tid, call
FROM syscalls
WHERE $tid IS NULL OR tid = $tid
ORDER BY seq
LIMIT $limit
