/*
 * cannoli_ring.h -- the shared-memory ring between the plugin and the recorder.
 *
 * The recorder creates a memfd, sizes it with cn_ring_size(), initialises it
 * with cn_ring_init() and passes the descriptor to QEMU (plugin option fd=N).
 * The plugin maps it and closes the descriptor before the guest starts, so the
 * guest never sees it; the memory disappears when both processes are gone, so a
 * crash leaves no shared-memory segment behind.
 *
 * The ring is a header plus n_lanes *lanes*.  A lane is one guest thread's
 * staging area: a lane header (live counts and state) and one fixed-capacity
 * array per section (cannoli_format.h).  The plugin writes records straight
 * into its lane, so nothing the guest did is held only in QEMU's private
 * memory: if QEMU dies, even by SIGKILL, the recorder salvages every lane.
 *
 * Lane states and who moves them:
 *   FREE  --producer CAS-->  OWNED  --producer-->  FULL  --consumer-->  FREE
 * A producer fills an OWNED lane; when a section is full or the thread ends it
 * publishes the lane (FULL, release) and takes another FREE one.  When none is
 * free it waits (lossless): yield, then sleep, and checks that the recorder is
 * still alive; if the recorder is gone it stops QEMU with a message.
 */
#ifndef CANNOLI_RING_H
#define CANNOLI_RING_H

#include <stddef.h>
#include <stdint.h>
#include "cannoli_format.h"

#define CN_RING_VERSION 4

enum cn_regs_state {
    CN_REGS_UNSET = 0,          /* the plugin never started                          */
    CN_REGS_RECORDED = 1,
    CN_REGS_OFF = 2,            /* regs=off                                          */
    CN_REGS_NO_API = 3,         /* plugin API 1: QEMU gives plugins no registers     */
    CN_REGS_NONE_KNOWN = 4,     /* QEMU listed no register this plugin records       */
};

enum cn_lane_state { CN_LANE_FREE = 0, CN_LANE_OWNED = 1, CN_LANE_FULL = 2 };

struct cn_ring_header {
    char     magic[8];          /* CN_RING_MAGIC                                     */
    uint32_t version;           /* CN_RING_VERSION                                   */
    uint32_t format_version;    /* CN_FORMAT_VERSION of the producer                 */
    uint32_t n_lanes;
    uint32_t recorder_pid;      /* producers check it is alive while they wait       */
    uint64_t lane_stride;       /* bytes from one lane to the next                   */
    uint64_t next_idx;          /* atomic: the next global instruction position; a
                                   thread draws its segment's positions when it closes
                                   the segment (format v3)                           */
    uint64_t next_block_id;     /* atomic: block ids, unique across threads/forks    */
    uint64_t guest_base;        /* host address of guest address 0 (set by plugin)   */
    uint32_t plugin_api;        /* QEMU plugin API version the plugin was built for  */
    uint32_t plugin_ready;      /* 1 once the plugin has mapped the ring             */
    uint64_t producer_waits;    /* atomic: times a producer found no free lane       */
    uint64_t lanes_published;   /* atomic: lanes producers handed over               */
    uint32_t stop;              /* set by the recorder: producers give up waiting    */
    uint32_t mem_enabled;       /* 1 if memory accesses are recorded                 */
    char     target[32];        /* QEMU target name, e.g. "x86_64"                   */
    uint64_t hits_offset;       /* byte offset of the block-end counters             */
    uint64_t hits_capacity;     /* counters there: blocks with a smaller id use one;
                                   the plugin sets 0 when it counts per vCPU instead */
    uint32_t regs_recorded;     /* registers the plugin records at block entry       */
    uint32_t regs_state;        /* CN_REGS_*: why registers are or are not recorded  */
    uint64_t regs_missed;       /* atomic, regs=check: register changes at block entry
                                   that the written-register masks did not predict   */
    uint64_t next_stream;       /* atomic: the next thread stream id (from 1)        */
    uint32_t inline_records;    /* 1: QEMU's generated code writes the records
                                   (qemu_patches/0004); 0: plugin callbacks      */
    uint32_t reserved32;
    uint64_t reserved[2];
};

struct cn_lane_header {
    uint32_t state;             /* enum cn_lane_state, atomic                        */
    uint32_t flags;             /* CN_PACKET_* to copy into the packet               */
    uint32_t pid;
    uint32_t tid;
    uint64_t packet_seq;
    uint64_t exec_first;
    uint32_t count[CN_NSECTIONS]; /* records written; each bumped after its record  */
    uint32_t cur_done;          /* see struct cn_packet_header                       */
    uint32_t cur_accessed;      /* 1 + index of the last instruction that completed an access; 0: none */
    uint32_t cur_block;         /* block id of the thread's current block            */
    uint32_t stream;            /* the thread's stream id (packet header)            */
    uint64_t cur_snap;          /* hits[cur_block] when that block started           */
    uint64_t seg_insns;         /* packet header's seg_insns                         */
};

/* Byte offsets of each section's array inside a lane (after the lane header). */
struct cn_lane_layout {
    size_t offset[CN_NSECTIONS];
    size_t record_size[CN_NSECTIONS];
    uint32_t capacity[CN_NSECTIONS];
    size_t stride;
};

static inline void cn_lane_layout(struct cn_lane_layout *l)
{
    /* LINE is made by the recorder when it packs a lane: no room in the lane */
    static const size_t rec[CN_NSECTIONS] = {
        4, 8, 8, 4, sizeof(struct cn_event), sizeof(struct cn_block), 1, 1, 1, 8, 4, sizeof(struct cn_line),
    };
    static const uint32_t cap[CN_NSECTIONS] = {
        CN_CAP_EXEC, CN_CAP_MEM, CN_CAP_MEM, CN_CAP_MEM, CN_CAP_EVENT,
        CN_CAP_BLOCK, CN_CAP_INSN_SIZE, CN_CAP_INSN_BYTES, CN_CAP_BLOB, CN_CAP_REG, CN_CAP_REG, 0,
    };
    size_t off = (sizeof(struct cn_lane_header) + 63) & ~(size_t)63;
    for (int s = 0; s < CN_NSECTIONS; s++) {
        l->offset[s] = off;
        l->record_size[s] = rec[s];
        l->capacity[s] = cap[s];
        off += (rec[s] * cap[s] + 63) & ~(size_t)63;
    }
    l->stride = (off + 4095) & ~(size_t)4095;
}

/* Block-end counters: hits[id] counts executions of block id's last
 * instruction (a QEMU inline add: no callback).  A thread that snapshots it
 * when the block starts knows, at its next block, whether the last
 * instruction ran.  Blocks with id >= CN_HITS_CAPACITY use a callback. */
#define CN_HITS_CAPACITY (4u * 1024u * 1024u)

static inline size_t cn_ring_lanes_end(uint32_t n_lanes)
{
    struct cn_lane_layout l;
    cn_lane_layout(&l);
    return 4096 + (size_t)n_lanes * l.stride;
}

static inline size_t cn_ring_size(uint32_t n_lanes)
{
    return cn_ring_lanes_end(n_lanes) + (size_t)CN_HITS_CAPACITY * sizeof(uint64_t);
}

static inline uint64_t *cn_ring_hits(struct cn_ring_header *r)
{
    return (uint64_t *)((char *)r + r->hits_offset);
}

static inline struct cn_lane_header *cn_ring_lane(struct cn_ring_header *r, uint32_t i)
{
    return (struct cn_lane_header *)((char *)r + 4096 + (size_t)i * r->lane_stride);
}

static inline void *cn_lane_section(struct cn_lane_header *lane,
                                    const struct cn_lane_layout *l, int s)
{
    return (char *)lane + l->offset[s];
}

#endif
