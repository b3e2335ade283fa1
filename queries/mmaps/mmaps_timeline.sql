-- name: mmaps_timeline
-- purpose: The address-space changes in trace order: the initial layout, then every mmap, munmap, mprotect, mremap and brk, with the backing file.
-- param pid: integer = null  only this process (default: all)
-- columns: idx, tid, pid, kind, start, end, length, prot, flags, path, file_offset
--   prot: as text, e.g. 'r-x' ('' where the call sets no protection).
-- example: cannoli query app.cannoli mmaps_timeline -p pid=4242
SELECT idx, tid, pid, kind, start, "end", "end" - start AS length,
       CASE WHEN prot IS NULL THEN '' ELSE
           (CASE WHEN prot & 1 <> 0 THEN 'r' ELSE '-' END) ||
           (CASE WHEN prot & 2 <> 0 THEN 'w' ELSE '-' END) ||
           (CASE WHEN prot & 4 <> 0 THEN 'x' ELSE '-' END) END AS prot,
       flags, path, file_offset
FROM mmaps
WHERE $pid IS NULL OR pid = $pid
ORDER BY idx NULLS FIRST, start
