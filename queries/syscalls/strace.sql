-- name: strace
-- purpose: The syscalls in order, rendered like strace: name(args) = result, with path arguments as strings and errors by name.
-- param tid: integer = null  only this thread (default: all)
-- param limit: integer = 100000  at most this many rows
-- columns: idx, tid, call
--   call: e.g. openat(0xffffff9c, "/etc/hostname", 0x0, 0x0, ...) = 3, or = -1 ENOENT.
--   All six argument registers are shown: the trace does not know each call's arity.
-- example: cannoli query app.cannoli strace --format csv
WITH errnos(n, name) AS (VALUES
    (1, 'EPERM'), (2, 'ENOENT'), (3, 'ESRCH'), (4, 'EINTR'), (5, 'EIO'), (6, 'ENXIO'), (7, 'E2BIG'),
    (8, 'ENOEXEC'), (9, 'EBADF'), (10, 'ECHILD'), (11, 'EAGAIN'), (12, 'ENOMEM'), (13, 'EACCES'),
    (14, 'EFAULT'), (16, 'EBUSY'), (17, 'EEXIST'), (18, 'EXDEV'), (19, 'ENODEV'), (20, 'ENOTDIR'),
    (21, 'EISDIR'), (22, 'EINVAL'), (23, 'ENFILE'), (24, 'EMFILE'), (25, 'ENOTTY'), (26, 'ETXTBSY'),
    (27, 'EFBIG'), (28, 'ENOSPC'), (29, 'ESPIPE'), (30, 'EROFS'), (31, 'EMLINK'), (32, 'EPIPE'),
    (33, 'EDOM'), (34, 'ERANGE'), (36, 'ENAMETOOLONG'), (38, 'ENOSYS'), (39, 'ENOTEMPTY'),
    (40, 'ELOOP'), (110, 'ETIMEDOUT'), (111, 'ECONNREFUSED'), (115, 'EINPROGRESS')
),
calls AS (
    SELECT s.*, [s.arg0, s.arg1, s.arg2, s.arg3, s.arg4, s.arg5] AS args
    FROM syscalls s
    WHERE $tid IS NULL OR s.tid = $tid
),
rendered_args AS (
    SELECT c.idx, c.tid,
           string_agg(coalesce('"' || replace(ss.value, '"', '\"') || '"' || CASE WHEN ss.truncated THEN '...' ELSE '' END,
                               printf('%#x', a.v)), ', ' ORDER BY a.i) AS text
    FROM calls c,
         LATERAL (SELECT unnest(c.args) AS v, unnest(range(6)) AS i) a
    LEFT JOIN syscall_strings ss ON ss.idx = c.idx AND ss.tid = c.tid AND ss.arg = a.i
    GROUP BY c.idx, c.tid
)
SELECT c.idx, c.tid,
       coalesce(c.name, 'syscall_' || c.nr) || '(' || r.text || ') = ' ||
       CASE WHEN c.ret IS NULL THEN '?'
            WHEN c.ret BETWEEN -4095 AND -1 THEN '-1 ' || coalesce(e.name, 'errno ' || (-c.ret))
            WHEN c.ret > 65535 OR c.ret < -4095 THEN printf('%#x', c.ret)
            ELSE c.ret::VARCHAR END AS call
FROM calls c
JOIN rendered_args r ON r.idx = c.idx AND r.tid = c.tid
LEFT JOIN errnos e ON e.n = -c.ret
ORDER BY c.seq
LIMIT $limit
