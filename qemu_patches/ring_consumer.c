/*
 * ring_consumer.c -- the recorder's side of the ring (loaded with cffi by
 * cannoli_db/recorder/ring.py).  Creates and initialises the ring, finds lanes
 * that producers published, copies a lane out as one packet
 * (cannoli_format.h) -- its header and side sections to one buffer, its heavy
 * sections to another, as a version 3 chunk stores them -- and hands lanes back.
 *
 * Counts in a lane were written by another process that may have died at any
 * moment: every count is clamped to its section's capacity before use.
 */
#include <stdbool.h>
#include <string.h>

#include "cannoli_ring.h"
#include "mem_codec.h"

#define CN_EXPORT __attribute__((visibility("default")))

CN_EXPORT size_t cn_consumer_ring_size(uint32_t n_lanes)
{
    return cn_ring_size(n_lanes);
}

static bool is_side(int s)
{
    return (CN_SIDE_SECTIONS >> s) & 1u;
}

/* The three sections cn_mem_encode writes together. */
static bool is_mem(int s)
{
    return s == CN_SEC_MEM_ADDR || s == CN_SEC_MEM_VALUE || s == CN_SEC_MEM_INFO;
}

/* Most bytes one packet takes in the side (side != 0) or the heavy buffer. */
CN_EXPORT size_t cn_consumer_max_part_size(int side)
{
    struct cn_lane_layout l;
    cn_lane_layout(&l);
    size_t size = side ? sizeof(struct cn_packet_header) : 0;
    for (int s = 0; s < CN_NSECTIONS; s++) {
        if (is_side(s) == (side != 0) && !is_mem(s)) {
            size += l.record_size[s] * (s == CN_SEC_LINE ? CN_CAP_LINE : l.capacity[s]);
        }
    }
    return size + (side ? 0 : cn_mem_max_encoded(CN_CAP_MEM));
}

/* Bytes of scratch cn_consumer_pack needs, zeroed before its first use: the
 * memory encoder's (which it keeps from packet to packet), then room for the
 * register transforms. */
CN_EXPORT size_t cn_consumer_scratch_size(void)
{
    return cn_mem_scratch_size() + CN_CAP_REG * sizeof(uint64_t);
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

/* Byte planes: plane k holds byte k of every value.  Eight 8-byte (or four
 * 4-byte) values at a time are transposed as a byte matrix in registers
 * (three rounds of block swaps), a whole byte of output per store instead of
 * a strided read per byte; the tail goes byte by byte. */
static void transpose8x8(uint64_t r[8])
{
    for (int i = 0; i < 4; i++) {
        uint64_t t = ((r[i] >> 32) ^ r[i + 4]) & 0x00000000ffffffffull;
        r[i] ^= t << 32;
        r[i + 4] ^= t;
    }
    for (int i = 0; i < 8; i += (i % 4 == 1) ? 3 : 1) {
        uint64_t t = ((r[i] >> 16) ^ r[i + 2]) & 0x0000ffff0000ffffull;
        r[i] ^= t << 16;
        r[i + 2] ^= t;
    }
    for (int i = 0; i < 8; i += 2) {
        uint64_t t = ((r[i] >> 8) ^ r[i + 1]) & 0x00ff00ff00ff00ffull;
        r[i] ^= t << 8;
        r[i + 1] ^= t;
    }
}

static void transpose4x4(uint32_t w[4])
{
    for (int i = 0; i < 2; i++) {
        uint32_t t = ((w[i] >> 16) ^ w[i + 2]) & 0x0000ffffu;
        w[i] ^= t << 16;
        w[i + 2] ^= t;
    }
    for (int i = 0; i < 4; i += 2) {
        uint32_t t = ((w[i] >> 8) ^ w[i + 1]) & 0x00ff00ffu;
        w[i] ^= t << 8;
        w[i + 1] ^= t;
    }
}

static char *put_planes(char *p, const void *src, uint32_t n, size_t width)
{
    const uint8_t *b = src;
    uint32_t i = 0;
    if (width == 8) {
        for (; i + 8 <= n; i += 8) {
            uint64_t r[8];
            memcpy(r, b + (size_t)i * 8, sizeof(r));
            transpose8x8(r);
            for (int k = 0; k < 8; k++) {
                memcpy(p + (size_t)k * n + i, &r[k], 8);
            }
        }
    } else if (width == 4) {
        for (; i + 4 <= n; i += 4) {
            uint32_t w[4];
            memcpy(w, b + (size_t)i * 4, sizeof(w));
            transpose4x4(w);
            for (int k = 0; k < 4; k++) {
                memcpy(p + (size_t)k * n + i, &w[k], 4);
            }
        }
    }
    for (size_t plane = 0; plane < width; plane++) {
        for (uint32_t j = i; j < n; j++) {
            p[plane * n + j] = (char)b[(size_t)j * width + plane];
        }
    }
    return p + width * n;
}

/* REG_INFO on disk: deltas, then byte planes (cannoli_format.h). */
static char *put_info(char *p, const uint32_t *w, uint32_t n, uint32_t *scratch)
{
    uint32_t prev = 0;
    for (uint32_t i = 0; i < n; i++) {
        scratch[i] = w[i] - prev;
        prev = w[i];
    }
    return put_planes(p, scratch, n, 4);
}

/* REG_VALUE on disk: each value minus the previous value of the same register
 * in the packet (0 before the first), then byte planes: a loop counter or a
 * pointer that moves by a few bytes leaves its high planes zero. */
static char *put_reg_values(char *p, const uint64_t *v, const uint32_t *info, uint32_t n,
                            uint64_t *scratch)
{
    uint64_t last[CN_MAX_REGS] = { 0 };
    for (uint32_t i = 0; i < n; i++) {
        uint32_t r = info[i] & (CN_MAX_REGS - 1u);
        scratch[i] = v[i] - last[r];
        last[r] = v[i];
    }
    return put_planes(p, scratch, n, 8);
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
    size_t need[2] = { cn_mem_max_encoded(n_mem), sizeof(h) }; /* heavy, side */
    for (int s = 0; s < CN_NSECTIONS; s++) {
        need[is_side(s)] += is_mem(s) ? 0 : h.count[s] * l.record_size[s];
    }
    if (need[1] > side_cap || need[0] > heavy_cap) {
        return 0;
    }
    void *reg_scratch = (char *)scratch + cn_mem_scratch_size();
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
        } else if (is_mem(s)) {
            continue;
        } else if (s == CN_SEC_REG_VALUE) {
            p = put_reg_values(p, src, cn_lane_section(lane, &l, CN_SEC_REG_INFO), h.count[s], reg_scratch);
        } else if (s == CN_SEC_REG_INFO) {
            p = put_info(p, src, h.count[s], reg_scratch);
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
    memcpy(header_at, &h, sizeof(h)); /* its MEM_ counts are known now */
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
