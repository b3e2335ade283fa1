/*
 * cannoli_format.h -- the Cannoli DB record format, defined once.
 *
 * Shared by the QEMU plugin (producer), the ring consumer library and, mirrored
 * field by field, by cannoli_db/format.py (a test checks that the two agree:
 * sizes, offsets, magics, capacities).  docs/format.md explains it in prose.
 *
 * A recording is a stream of *packets*.  A packet is one snapshot of one guest
 * thread's lane (see cannoli_ring.h): a fixed-size packet header followed by
 * the used part of each section, in section order, with no padding.  Each
 * section is an array of fixed-size records, so a reader decodes a section with
 * one numpy.frombuffer call.  Chunk files hold zstd-compressed runs of packets.
 *
 * Bump CN_FORMAT_VERSION only on an incompatible change; readers check it first.
 * All integers are little-endian; all addresses are guest virtual addresses.
 */
#ifndef CANNOLI_FORMAT_H
#define CANNOLI_FORMAT_H

#include <stdint.h>

#define CN_FORMAT_VERSION 4
/* Version 4 stores memory accesses and register records predicted from the
 * previous record of the same block position ("records on disk", below) and
 * adds n_mem and n_regs to the packet header; the lanes and every other
 * section are as in version 3.
 * Version 3 draws global instruction positions in the plugin (SEGMENT events
 * carry them), identifies each thread's stream by a ring-wide id, adds the
 * LINE section (12 counts in the packet header) and splits a chunk into a side
 * frame and a heavy frame.  Versions 3, 2 (seq-ordered segments, one frame,
 * 11 counts) and 1 (no registers: 9 counts, a 104-byte packet header) are
 * still read. */

/* 8-byte magics, stored as bytes (not as integers). */
#define CN_CHUNK_MAGIC  "CNDBCHNK"
#define CN_PACKET_MAGIC "CNDBPAKT"
#define CN_RING_MAGIC   "CNDBRING"

/* ---- sections of a packet ------------------------------------------------
 * In the ring and in version 1-2 packets the sections follow each other in
 * this order.  In version 3 chunks a packet is split: its header and the side
 * sections (EVENT, BLOCK, INSN_SIZE, INSN_BYTES, BLOB) in the chunk's side
 * frame, its heavy sections (EXEC, MEM_*, REG_*) in the heavy frame, each
 * group in this order. */
enum cn_section {
    CN_SEC_EXEC = 0,      /* uint32 block_id per executed block                  */
    CN_SEC_MEM_ADDR,      /* uint64 per access: address                           */
    CN_SEC_MEM_VALUE,     /* uint64 per access: value read back after the access  */
    CN_SEC_MEM_INFO,      /* uint32 per access: see CN_MEMINFO_*                  */
    CN_SEC_EVENT,         /* struct cn_event per event                            */
    CN_SEC_BLOCK,         /* struct cn_block per translated block                 */
    CN_SEC_INSN_SIZE,     /* uint8 per instruction of the blocks above, bytes     */
    CN_SEC_INSN_BYTES,    /* uint8: the blocks' instruction bytes, concatenated   */
    CN_SEC_BLOB,          /* uint8: strings and buffers that events point into    */
    CN_SEC_REG_VALUE,     /* uint64 per register change: the new value (v2)       */
    CN_SEC_REG_INFO,      /* uint32 per register change: see CN_REGINFO_* (v2)    */
    CN_SEC_LINE,          /* struct cn_line per 64-byte line the packet's memory
                             accesses touch (v3; made by the recorder when it
                             packs the lane, not a lane section)                  */
    CN_NSECTIONS
};

#define CN_SIDE_SECTIONS ((1u << CN_SEC_EVENT) | (1u << CN_SEC_BLOCK) | (1u << CN_SEC_INSN_SIZE) | \
                          (1u << CN_SEC_INSN_BYTES) | (1u << CN_SEC_BLOB) | (1u << CN_SEC_LINE))

/* On disk (in packets) five sections are encoded to compress well; in the
 * ring they are plain arrays.  count[] of a packet gives records, except for
 * the MEM_ and REG_ sections, whose counts are their lengths in bytes (version
 * 4; the packet header's n_mem and n_regs count their records): see "records
 * on disk" below.
 * Versions 1-3 stored MEM_ADDR as address deltas a[i] - a[i-1] (mod 2^64) in
 * byte planes (all bytes 0 of the n deltas, then all bytes 1, ...; 8n bytes),
 * MEM_INFO and REG_INFO as deltas of the words in 4 byte planes (4n bytes),
 * MEM_VALUE as each value cut to its access size, grouped by size (all 1-byte
 * values in access order, then 2-, 4-, 8-byte ones; its count in bytes) and
 * REG_VALUE as each value minus the previous value of the same register in
 * the packet, in 8 byte planes; their other counts are records. */

/* Capacity of each section in one lane, in records.  A packet never holds more;
 * readers reject a packet that claims more. */
#define CN_CAP_EXEC        65536u
#define CN_CAP_MEM         65536u
#define CN_CAP_EVENT       4096u
#define CN_CAP_BLOCK       8192u
#define CN_CAP_INSN_SIZE   65536u
#define CN_CAP_INSN_BYTES  262144u
#define CN_CAP_BLOB        262144u
#define CN_CAP_REG         65536u
#define CN_CAP_LINE        131072u  /* at most two lines per memory access */

/* QEMU translates at most 512 instructions into one block (TCG_MAX_INSNS). */
#define CN_MAX_BLOCK_INSNS 512u
/* A thread closes its ordering segment after at most this many blocks (and at
 * every syscall and lane rollover): it bounds how coarse cross-thread order is,
 * and how far back a reader finds a register keyframe (CN_REGINFO_KEYFRAME):
 * at most CN_SEGMENT_BLOCKS * CN_MAX_BLOCK_INSNS positions of the thread. */
#define CN_SEGMENT_BLOCKS 1024u
/* Longest string or buffer one event may carry in the blob section, bytes. */
#define CN_MAX_BLOB_ITEM   4096u

/* ---- memory access info word (CN_SEC_MEM_INFO) ----------------------------
 * bits  0..2  log2(access size in bytes)                (0..3: 1..8 bytes)
 * bit   3     1 = store, 0 = load
 * bit   4     1 = guest big-endian access (never set yet: little-endian guests only)
 * bits  5..13 index of the instruction within its block (0..511)
 * bits 14..31 link: which exec of this packet the access belongs to:
 *             link k >= 1 -> exec[k-1] of this packet.  Versions 1-2 also
 *             have link 0: the thread's block that was executing when the
 *             packet began (the last exec of the thread's previous packet);
 *             version 3 repeats that block as exec[0] instead
 *             (CN_PACKET_CONTINUES).                                         */
#define CN_MEMINFO_SHIFT_MASK  0x7u
#define CN_MEMINFO_STORE       (1u << 3)
#define CN_MEMINFO_BIGENDIAN   (1u << 4)
#define CN_MEMINFO_INSN_SHIFT  5
#define CN_MEMINFO_INSN_MASK   0x1ffu
#define CN_MEMINFO_LINK_SHIFT  14
#define CN_MEMINFO_LOW_MASK    0x3fffu  /* every bit but the link */

/* ---- records on disk (version 4; qemu_patches/record_codec.c) -------------
 * Memory accesses and register records are encoded alike.  Record i (an
 * access, or a register record) belongs to block b = exec[link-1] (0 if link
 * is 0 or past the EXEC section) and is the k-th record of its kind in that
 * execution (k = how many records before it in the packet have the same
 * link).  Its *slot* is
 *     (((uint32)(b * CN_MEM_SLOT_MUL_BLOCK) >> (32 - CN_MEM_SLOT_BITS)) + k)
 *         mod 2^CN_MEM_SLOT_BITS
 * and its prediction the address, value and low info bits of the slot's
 * previous record in the packet, zeros before the first.  The low info bits
 * are everything but the link: for an access info & CN_MEMINFO_LOW_MASK, for
 * a register record its number | CHANGED >> 22 | KEYFRAME >> 22 (bits 0..9).
 * Each record stores
 *     ra = zigzag(address - predicted address)      (mod 2^64; accesses only)
 *     rv = zigzag(value - predicted value)          (an access's at its width)
 * where zigzag(d) = (d << 1) ^ (d >> 63, arithmetic), its low info bits only
 * when they differ from the prediction, and its link as the step from the
 * previous record's link (mod 2^32, link[-1] = 0).
 *   MEM_INFO   n control bytes, one per access: bits 0..1 the address class,
 *              bits 2..4 the value class, bit 5 CN_MEMCTL_INFO_EXPLICIT, bits
 *              6..7 the link step (0, 1, 2, or CN_MEMCTL_LINK_EXPLICIT);
 *              then a uint16 of low info bits per explicit one, in access
 *              order; then a uint32 link step per explicit one.
 *   MEM_ADDR   ra cut to its class's width (byte c of CN_MEMCTL_ADDR_WIDTHS),
 *              grouped by class (all class-1 payloads in access order, then
 *              class 2, class 3; class 0 has none), little-endian.
 *   MEM_VALUE  rv likewise, with CN_MEMCTL_VALUE_WIDTHS (classes 1..7).
 *   REG_INFO   as MEM_INFO (address class always 0).
 *   REG_VALUE  as MEM_VALUE.
 * A class is the narrowest whose width holds the payload.  Every packet is
 * decoded on its own. */
#define CN_MEM_SLOT_BITS         16
#define CN_MEM_SLOT_MUL_BLOCK    0x9E3779B1u
#define CN_MEMCTL_ADDR_SHIFT     0
#define CN_MEMCTL_ADDR_MASK      0x3u
#define CN_MEMCTL_VALUE_SHIFT    2
#define CN_MEMCTL_VALUE_MASK     0x7u
#define CN_MEMCTL_INFO_EXPLICIT  (1u << 5)
#define CN_MEMCTL_LINK_SHIFT     6
#define CN_MEMCTL_LINK_EXPLICIT  3u
#define CN_MEMCTL_ADDR_WIDTHS    0x08030100u           /* bytes: 0, 1, 3, 8 */
#define CN_MEMCTL_VALUE_WIDTHS   0x0806050403020100ull /* bytes: 0, 1, 2, 3, 4, 5, 6, 8 */

/* ---- register record info word (CN_SEC_REG_INFO) -------------------------
 * Registers are recorded at block entry (plugin API >= 2): as changes (the
 * value differs from the thread's previous block entry) and, at the first
 * block of a thread and after every ordering segment, as a keyframe (every
 * recorded register, changed or not), so that a reader finds a register's
 * value at most one segment back.
 * bits  0..7  register number (CN_EV_REG_NAME names it)
 * bits  8..29 link, as for memory accesses: k >= 1 -> exec[k-1] of this
 *             packet; 0 -> the block executing when the packet began
 * bit  30     CN_REGINFO_CHANGED: the value differs from the previous entry's
 * bit  31     CN_REGINFO_KEYFRAME: part of a full register state (version 3;
 *             in versions 1-2 every record is a change and bits 8..31 link) */
#define CN_REGINFO_NUMBER_MASK 0xffu
#define CN_REGINFO_LINK_SHIFT  8
#define CN_REGINFO_LINK_MASK   0x3fffffu
#define CN_REGINFO_CHANGED     (1u << 30)
#define CN_REGINFO_KEYFRAME    (1u << 31)
/* Most registers one recording can name (the number fits the info word). */
#define CN_MAX_REGS 64u

/* ---- lines touched (CN_SEC_LINE) -----------------------------------------
 * The address index of a packet: one record per 64-byte line whose bytes any
 * of its accesses covered, with which bytes were read and which written, and
 * the first and last of its accesses (0-based, in the packet's access order)
 * that covered the line.  An access that crosses a line boundary counts in
 * both lines.  In first-access order.  A reader looking for the accesses to a
 * byte reads only the packets whose lines say one covered it -- and knows
 * without reading anything that no access in the other packets did. */
#define CN_LINE_SHIFT 6

struct cn_line {
    uint64_t line;          /* address >> CN_LINE_SHIFT                            */
    uint64_t read_bytes;    /* bit k: an access read byte k of the line            */
    uint64_t written_bytes; /* bit k: an access wrote byte k                       */
    uint32_t first;         /* first access covering the line                      */
    uint32_t last;          /* last access covering the line                       */
};                          /* 32 bytes */

/* ---- events (CN_SEC_EVENT) ------------------------------------------------ */
enum cn_event_kind {
    CN_EV_THREAD_START = 1, /* v0 pid, v1 tid, v2 parent pid if this is a fork child else 0 */
    CN_EV_THREAD_EXIT  = 2, /* the guest thread ended                                      */
    CN_EV_SYSCALL      = 3, /* v0 number, v1..v6 arguments 1..6                            */
    CN_EV_SYSRET       = 4, /* v0 number, v1 return value (as int64)                       */
    CN_EV_SEGMENT      = 5, /* closes the thread's open ordering segment: execs with
                               ordinal < `ordinal` not yet in a segment.  v3: v0 global
                               position of its first instruction (drawn from the ring's
                               next_idx), v1 its instructions; seq = v0 + v1.  v1-2: seq
                               orders segments, v0 and v1 are 0                            */
    CN_EV_PARTIAL      = 6, /* exec `ordinal` ran only v0 instructions of its block; v1 is
                               the twin block of those instructions                        */
    CN_EV_BLOB         = 7, /* v0 guest address, v1 blob offset in this packet, v2 length,
                               v3 syscall number, v4 argument index, v5 CN_BLOB_* flags,
                               v6 item: 0 the memory the argument points to; for an iovec
                               array (CN_BLOB_BUFFER) k >= 1 the data of element k-1     */
    CN_EV_PROCESS      = 8, /* first translation of the recording (fork children share the
                               parent's layout): v0 start of the program's
                               code, v1 end of it, v2 its entry point (QEMU's loader view),
                               v3 guest_base, v4 pc of the first block, v5 blob offset and
                               v6 length of the program's path                             */
    CN_EV_REG_NAME     = 9, /* (v2) register number v0 is named by the v2 bytes at blob
                               offset v1; v3 its size in bytes as QEMU reads it             */
};

#define CN_BLOB_STRING     1u   /* a NUL-terminated string argument (NUL not stored)   */
#define CN_BLOB_TRUNCATED  2u   /* longer than CN_MAX_BLOB_ITEM: only the prefix kept  */
#define CN_BLOB_UNREADABLE 4u   /* the guest pointer could not be read (length 0)      */
#define CN_BLOB_BUFFER     8u   /* bytes the kernel reads (copied at syscall entry) or
                                   writes (copied at its return, if it succeeded): the
                                   call's length or struct size, at most the cap        */

struct cn_event {
    uint16_t kind;          /* enum cn_event_kind                                     */
    uint16_t flags;         /* reserved, 0                                            */
    uint32_t reserved;      /* 0                                                      */
    uint64_t ordinal;       /* exec ordinal (0-based, per thread): for SYSCALL, SYSRET,
                               BLOB and PARTIAL the block executing (the syscall's
                               block); for the others the count of blocks started
                               before the event                                      */
    uint64_t seq;           /* global order: v3 the global position where the event
                               happened (for SEGMENT and SYSCALL one past the segment's
                               last instruction; THREAD_START/EXIT the ring's next_idx);
                               v1-2 a ring-wide counter; 0 = none                    */
    uint64_t v[7];          /* kind-specific values, see above                        */
};                          /* 80 bytes */

/* ---- translated blocks (CN_SEC_BLOCK) ------------------------------------- */
#define CN_BLOCK_TWIN 1u    /* a prefix of block `base_id` that QEMU executed when the
                               block stopped early; same pc, fewer instructions       */

struct cn_block {
    uint64_t pc;            /* guest address of the first instruction                 */
    uint32_t block_id;      /* unique for the whole recording (all threads, forks)    */
    uint16_t n_insns;       /* instructions; their sizes follow in CN_SEC_INSN_SIZE    */
    uint16_t flags;         /* CN_BLOCK_*                                             */
    uint32_t n_bytes;       /* instruction bytes; they follow in CN_SEC_INSN_BYTES     */
    uint32_t base_id;       /* the full block for a twin, else block_id itself        */
};                          /* 24 bytes */

/* ---- packet header ---------------------------------------------------------
 * One per packet, followed by the sections (counts below give their lengths). */
#define CN_PACKET_SALVAGED  1u  /* taken from a lane whose producer had died or
                                   stopped without closing it                      */
#define CN_PACKET_LAST      2u  /* the thread closed its stream (thread exit)      */
#define CN_PACKET_CONTINUES 4u  /* v3: exec[0] is the block that was executing when
                                   the previous packet ended (its last exec, same
                                   ordinal), repeated so that this packet's records
                                   of that block can link to it; not a new execution */

struct cn_packet_header {
    char     magic[8];      /* CN_PACKET_MAGIC                                        */
    uint16_t version;       /* CN_FORMAT_VERSION                                      */
    uint16_t header_size;   /* sizeof(struct cn_packet_header)                        */
    uint32_t flags;         /* CN_PACKET_*                                            */
    uint32_t pid;           /* host = guest process id of the producing thread        */
    uint32_t tid;           /* host = guest thread id                                 */
    uint64_t packet_seq;    /* 0, 1, 2 ... per thread                                 */
    uint64_t exec_first;    /* the thread's exec ordinal of exec[0] in this packet     */
    uint32_t count[CN_NSECTIONS]; /* records in each section                           */
    uint32_t cur_done;      /* 1 if the thread's last started block reached its last
                               instruction (or a syscall) when this packet was taken  */
    uint32_t cur_progress;  /* highest instruction index known started in that block  */
    uint32_t cur_accessed;  /* 1 + index of the last instruction of that block that
                               completed a memory access; 0 if none (fault_point.h)   */
    uint32_t stream;        /* v3: the thread's stream id, unique in the recording
                               (ring-wide counter, from 1); v1-2: 0                   */
    uint64_t seg_insns;     /* v3: instructions of exec[0]'s ordering segment that
                               precede exec[0] (execs of that segment in earlier
                               packets); final: those blocks are resolved.  v1-2: 0   */
    uint32_t n_mem;         /* v4: memory accesses in the packet                      */
    uint32_t n_regs;        /* v4: register records in the packet                     */
};                          /* 120 bytes (version 3: 112; 2: 112, 11 counts; 1: 104, 9) */

/* ---- chunk file ------------------------------------------------------------
 * chunks/NNNNNN.zst = this header, then the side frame (zstd; its content is
 * each packet's header and side sections, packet after packet), then the heavy
 * frame (zstd; each packet's heavy sections, in the same packet order).  Once
 * the heavy sections are in the Parquet store (chunks/{exec,mem,regs}/
 * NNNNNN.parquet, docs/format.md) the heavy frame may be dropped: flag
 * CN_CHUNK_HEAVY_IN_STORE, heavy_size 0.  Written to a temporary name,
 * fsynced, then renamed.  (Version 1-2 chunks: a 72-byte header and one frame
 * of whole packets.) */
#define CN_CHUNK_HEAVY_IN_STORE 1u

struct cn_chunk_header {
    char     magic[8];      /* CN_CHUNK_MAGIC                                         */
    uint16_t version;       /* CN_FORMAT_VERSION                                      */
    uint16_t header_size;   /* sizeof(struct cn_chunk_header)                         */
    uint32_t n_packets;     /* packets in the frames                                  */
    uint64_t chunk_seq;     /* equals NNNNNN in the file name                         */
    uint64_t side_size;     /* bytes of the side zstd frame (right after the header)  */
    uint64_t side_raw;      /* bytes of its content                                   */
    uint64_t heavy_size;    /* bytes of the heavy zstd frame (after the side frame)   */
    uint64_t heavy_raw;     /* bytes of its content (also when the frame was dropped) */
    uint32_t side_crc32;    /* zlib CRC-32 of the side frame                          */
    uint32_t heavy_crc32;   /* zlib CRC-32 of the heavy frame (kept when dropped: the
                               store's parts name it, so they match this chunk)      */
    uint32_t flags;         /* CN_CHUNK_*                                             */
    uint32_t header_crc32;  /* zlib CRC-32 of this header with this field set to 0    */
    uint64_t n_exec;        /* record totals over the packets, for quick `info`       */
    uint64_t n_mem;
    uint64_t n_event;
};                          /* 96 bytes (versions 1-2: 72) */

/* A chunk's frame never decompresses to more than this (bytes). */
#define CN_MAX_CHUNK_RAW (256u * 1024u * 1024u)

/* An event ordinal of all ones: before the thread's first block (a fork
 * child's return from fork). */
#define CN_ORDINAL_BEFORE_FIRST UINT64_MAX

#endif
