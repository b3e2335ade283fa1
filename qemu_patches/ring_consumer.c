/*
 * ring_consumer.c -- the recorder's side of the ring (loaded with cffi by
 * recorder/ring.py).  Creates and initialises the ring, finds lanes that
 * producers published, copies a lane out as one packet (cannoli_format.h) --
 * its header and side sections to one buffer, its heavy sections to another,
 * encoded as a version 4 chunk stores them (record_codec.c) -- and hands
 * lanes back.
 *
 * Counts in a lane were written by another process that may have died at any
 * moment: every count is clamped to its section's capacity before use.
 */
#include <stdbool.h>
#include <string.h>

#include "cannoli_ring.h"
#include "record_codec.h"

#define CN_EXPORT __attribute__((visibility("default")))

CN_EXPORT size_t cn_consumer_ring_size(uint32_t n_lanes)
{
    return cn_ring_size(n_lanes);
}

static bool is_side(int s)
{
    return (CN_SIDE_SECTIONS >> s) & 1u;
}

/* The sections the record codec writes (record_codec.c): MEM_ADDR with
 * MEM_VALUE and MEM_INFO, REG_VALUE with REG_INFO. */
static bool is_encoded(int s)
{
    return s == CN_SEC_MEM_ADDR || s == CN_SEC_MEM_VALUE || s == CN_SEC_MEM_INFO || s == CN_SEC_REG_VALUE ||
           s == CN_SEC_REG_INFO;
}

/* Most bytes one packet takes in the side (side != 0) or the heavy buffer. */
CN_EXPORT size_t cn_consumer_max_part_size(int side)
{
    struct cn_lane_layout l;
    cn_lane_layout(&l);
    size_t size = side ? sizeof(struct cn_packet_header) : 0;
    for (int s = 0; s < CN_NSECTIONS; s++) {
        if (is_side(s) == (side != 0) && !is_encoded(s)) {
            size += l.record_size[s] * (s == CN_SEC_LINE ? CN_CAP_LINE : l.capacity[s]);
        }
    }
    return size + (side ? 0 : cn_mem_max_encoded(CN_CAP_MEM) + cn_reg_max_encoded(CN_CAP_REG));
}

/* Bytes of scratch cn_consumer_pack needs, zeroed before its first use: the
 * record encoder's, which it keeps from packet to packet. */
CN_EXPORT size_t cn_consumer_scratch_size(void)
{
    return cn_codec_scratch_size();
}

/* The LINE section (cannoli_format.h) of n accesses: an open-addressing table
 * of the lines seen so far, cleared after each packet through its used slots. */
#define LINE_SLOTS (1u << 18)
static uint32_t line_slot[LINE_SLOTS]; /* 1 + index in lines, 0: empty */
static uint32_t slot_used[CN_CAP_LINE];
static struct cn_line lines[CN_CAP_LINE];
static uint32_t n_lines;

static struct cn_line *line_entry(uint64_t line, uint32_t i)
{
    uint32_t h = (uint32_t)((line * 0x9E3779B97F4A7C15ull) >> (64 - 18));
    while (line_slot[h] && lines[line_slot[h] - 1].line != line) {
        h = (h + 1) & (LINE_SLOTS - 1);
    }
    if (!line_slot[h]) {
        slot_used[n_lines] = h;
        line_slot[h] = ++n_lines;
        lines[n_lines - 1] = (struct cn_line){ line, 0, 0, i, i };
    }
    return &lines[line_slot[h] - 1];
}

static void touch(struct cn_line *e, uint64_t bytes, bool store, uint32_t i)
{
    if (store) {
        e->written_bytes |= bytes;
    } else {
        e->read_bytes |= bytes;
    }
    e->last = i;
}

static uint32_t find_lines(const uint64_t *addr, const uint32_t *info, uint32_t n)
{
    n_lines = 0;
    uint64_t last_line = UINT64_MAX;
    struct cn_line *e = NULL;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t shift = info[i] & CN_MEMINFO_SHIFT_MASK;
        uint32_t size = 1u << (shift > 3 ? 3 : shift);
        uint64_t line = addr[i] >> CN_LINE_SHIFT;
        uint32_t at = (uint32_t)(addr[i] & 63);
        bool store = info[i] & CN_MEMINFO_STORE;
        if (line != last_line) {
            e = line_entry(line, i);
            last_line = line;
        }
        uint64_t bytes = (size == 8 ? ~0ull >> 56 : (1ull << size) - 1);
        touch(e, bytes << at, store, i);
        if (at + size > 64) { /* the access runs into the next line */
            touch(line_entry(line + 1, i), bytes >> (64 - at), store, i);
            last_line = UINT64_MAX;
        }
    }
    for (uint32_t k = 0; k < n_lines; k++) {
        line_slot[slot_used[k]] = 0;
    }
    return n_lines;
}

CN_EXPORT int cn_consumer_init(void *mem, size_t size, uint32_t n_lanes, uint32_t recorder_pid)
{
    struct cn_lane_layout l;
    cn_lane_layout(&l);
    if (n_lanes == 0 || size < cn_ring_size(n_lanes)) {
        return -1;
    }
    struct cn_ring_header *r = mem;
    memset(r, 0, sizeof(*r));
    memcpy(r->magic, CN_RING_MAGIC, 8);
    r->version = CN_RING_VERSION;
    r->format_version = CN_FORMAT_VERSION;
    r->n_lanes = n_lanes;
    r->lane_stride = l.stride;
    r->recorder_pid = recorder_pid;
    r->next_block_id = 1; /* 0 is never a block id */
    r->next_stream = 1;   /* nor a stream id */
    r->hits_offset = cn_ring_lanes_end(n_lanes);
    r->hits_capacity = CN_HITS_CAPACITY;
    for (uint32_t i = 0; i < n_lanes; i++) {
        memset(cn_ring_lane(r, i), 0, sizeof(struct cn_lane_header));
    }
    return 0;
}

CN_EXPORT uint32_t cn_consumer_lane_state(void *mem, uint32_t lane)
{
    struct cn_ring_header *r = mem;
    return __atomic_load_n(&cn_ring_lane(r, lane)->state, __ATOMIC_ACQUIRE);
}

/* Index of a FULL lane at or after `start` (wrapping), or -1. */
CN_EXPORT int cn_consumer_next_full(void *mem, uint32_t start)
{
    struct cn_ring_header *r = mem;
    for (uint32_t i = 0; i < r->n_lanes; i++) {
        uint32_t lane = (start + i) % r->n_lanes;
        if (cn_consumer_lane_state(mem, lane) == CN_LANE_FULL) {
            return (int)lane;
        }
    }
    return -1;
}

/* Copy lane `lane_index` as one packet: its header and side sections to
 * `side`, its heavy sections to `heavy` (format in cannoli_format.h).  Returns
 * the bytes written to `side` (0 if the lane holds nothing) and puts the
 * heavy bytes in *heavy_used.  `scratch` holds cn_consumer_scratch_size() bytes,
 * the same ones for every call. */
CN_EXPORT size_t cn_consumer_pack(void *mem, uint32_t lane_index, void *side, size_t side_cap, void *heavy,
                                  size_t heavy_cap, uint32_t extra_flags, void *scratch, size_t *heavy_used)
{
    struct cn_ring_header *r = mem;
    struct cn_lane_header *lane = cn_ring_lane(r, lane_index);
    struct cn_lane_layout l;
    cn_lane_layout(&l);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    *heavy_used = 0;

    struct cn_packet_header h;
    memset(&h, 0, sizeof(h));
    memcpy(h.magic, CN_PACKET_MAGIC, 8);
    h.version = CN_FORMAT_VERSION;
    h.header_size = sizeof(h);
    h.flags = lane->flags | extra_flags;
    h.pid = lane->pid;
    h.tid = lane->tid;
    h.packet_seq = lane->packet_seq;
    h.exec_first = lane->exec_first;
    h.stream = lane->stream;
    h.seg_insns = lane->seg_insns;
    h.cur_done = lane->cur_done;
    /* lane: 1 + last instruction with a completed access (0: none);
     * packet: index of the last instruction known to have started */
    h.cur_progress = lane->cur_accessed ? lane->cur_accessed - 1u : 0u;
    h.cur_accessed = lane->cur_accessed;
    if (!h.cur_done && lane->cur_block && lane->cur_block < r->hits_capacity) {
        /* the block-end counter moved since the block started: its last
         * instruction ran */
        uint64_t hits = __atomic_load_n(&cn_ring_hits(r)[lane->cur_block], __ATOMIC_RELAXED);
        h.cur_done = hits != lane->cur_snap;
    }
    uint32_t total = 0;
    for (int s = 0; s < CN_NSECTIONS; s++) {
        uint32_t c = __atomic_load_n(&lane->count[s], __ATOMIC_ACQUIRE);
        if (s == CN_SEC_MEM_VALUE || s == CN_SEC_MEM_INFO) {
            c = h.count[CN_SEC_MEM_ADDR]; /* the memory sections share one count */
        }
        if (s == CN_SEC_REG_VALUE) {
            /* so do the register sections: REG_INFO's, bumped after both records */
            c = __atomic_load_n(&lane->count[CN_SEC_REG_INFO], __ATOMIC_ACQUIRE);
        } else if (s == CN_SEC_REG_INFO) {
            c = h.count[CN_SEC_REG_VALUE];
        }
        h.count[s] = c < l.capacity[s] ? c : l.capacity[s]; /* LINE: 0 until computed below */
        total += h.count[s];
    }
    if (total == 0) {
        return 0;
    }
    uint32_t n_mem = h.count[CN_SEC_MEM_ADDR];
    const uint32_t *info = cn_lane_section(lane, &l, CN_SEC_MEM_INFO);
    h.n_mem = n_mem;
    h.count[CN_SEC_LINE] = find_lines(cn_lane_section(lane, &l, CN_SEC_MEM_ADDR), info, n_mem);
    uint32_t n_regs = h.count[CN_SEC_REG_INFO];
    h.n_regs = n_regs;
    size_t need[2] = { cn_mem_max_encoded(n_mem) + cn_reg_max_encoded(n_regs), sizeof(h) }; /* heavy, side */
    for (int s = 0; s < CN_NSECTIONS; s++) {
        need[is_side(s)] += is_encoded(s) ? 0 : h.count[s] * l.record_size[s];
    }
    if (need[1] > side_cap || need[0] > heavy_cap) {
        return 0;
    }
    char *out[2] = { heavy, side };
    char *header_at = out[1];
    out[1] += sizeof(h);
    for (int s = 0; s < CN_NSECTIONS; s++) {
        const void *src = cn_lane_section(lane, &l, s);
        char *p = out[is_side(s)];
        if (s == CN_SEC_MEM_ADDR) { /* MEM_VALUE and MEM_INFO with it */
            size_t size[3];
            p += cn_mem_encode(src, cn_lane_section(lane, &l, CN_SEC_MEM_VALUE), info, n_mem,
                               cn_lane_section(lane, &l, CN_SEC_EXEC), h.count[CN_SEC_EXEC], p, scratch, size);
            h.count[CN_SEC_MEM_ADDR] = (uint32_t)size[0];
            h.count[CN_SEC_MEM_VALUE] = (uint32_t)size[1];
            h.count[CN_SEC_MEM_INFO] = (uint32_t)size[2];
        } else if (s == CN_SEC_REG_VALUE) { /* REG_INFO with it */
            size_t size[2];
            p += cn_reg_encode(src, cn_lane_section(lane, &l, CN_SEC_REG_INFO), n_regs,
                               cn_lane_section(lane, &l, CN_SEC_EXEC), h.count[CN_SEC_EXEC], p, scratch, size);
            h.count[CN_SEC_REG_VALUE] = (uint32_t)size[0];
            h.count[CN_SEC_REG_INFO] = (uint32_t)size[1];
        } else if (is_encoded(s)) {
            continue;
        } else if (s == CN_SEC_LINE) {
            memcpy(p, lines, h.count[s] * sizeof(struct cn_line));
            p += h.count[s] * sizeof(struct cn_line);
        } else {
            size_t bytes = h.count[s] * l.record_size[s];
            memcpy(p, src, bytes);
            p += bytes;
        }
        out[is_side(s)] = p;
    }
    memcpy(header_at, &h, sizeof(h)); /* its MEM_ and REG_ counts are known now */
    *heavy_used = (size_t)(out[0] - (char *)heavy);
    return (size_t)(out[1] - (char *)side);
}

/* Give a lane back to the producers. */
CN_EXPORT void cn_consumer_release(void *mem, uint32_t lane_index)
{
    struct cn_ring_header *r = mem;
    struct cn_lane_header *lane = cn_ring_lane(r, lane_index);
    for (int s = 0; s < CN_NSECTIONS; s++) {
        lane->count[s] = 0;
    }
    __atomic_store_n(&lane->state, CN_LANE_FREE, __ATOMIC_RELEASE);
}

CN_EXPORT void cn_consumer_stop(void *mem)
{
    struct cn_ring_header *r = mem;
    __atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
}
