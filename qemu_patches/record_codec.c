/*
 * record_codec.c -- the heavy records of a packet as version 4 stores them
 * (cannoli_format.h, "records on disk"): memory accesses (MEM_ADDR, MEM_VALUE,
 * MEM_INFO) and register records (REG_VALUE, REG_INFO).  The encoder the
 * recorder runs when it packs a lane and the decoder every reader runs live
 * side by side, so that the rule has one home.  Built into the consumer
 * library (cannoli_db/native: consumer_path) and loaded with cffi by
 * recorder/ring.py and cannoli_db/native/record_codec.py.
 *
 * Each record is predicted from the previous record of its *slot* -- the same
 * block, the same position among that block's records -- so a loop's store
 * through a moving pointer costs its stride, a reload of the same location or
 * a register the block sets to the same value costs nothing, and neither pays
 * for the jumps between neighbours.  What is left is cut to the bytes it
 * needs, grouped by width so that the compressor sees like next to like.
 *
 * Decoding reads untrusted bytes: every length is checked against the section
 * sizes before use, and a value wider than its access is refused.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cannoli_format.h"
#include "record_codec.h"

#define CN_EXPORT __attribute__((visibility("default")))

#define N_SLOTS (1u << CN_MEM_SLOT_BITS)
#define ADDR_CLASSES 4u
#define VALUE_CLASSES 8u

struct slot {
    uint64_t addr;
    uint64_t value;
    uint32_t low;   /* the info word's bits other than the link (struct kind) */
    uint32_t epoch; /* the packet that last wrote it: other packets see zeros */
};

/* The slots, at the start of the caller's scratch: each encoder or decoder
 * (the index decodes in several threads) has its own. */
struct predictor {
    struct slot slot[N_SLOTS];
    uint32_t epoch;
};

/* A class table: the width of each class, and the class of a payload that
 * needs 0..8 bytes (the narrowest class that holds it). */
struct classes {
    unsigned n;
    unsigned width[VALUE_CLASSES];
    unsigned of_need[9];
};

static struct classes make_classes(uint64_t widths, unsigned n)
{
    struct classes t = { n, { 0 }, { 0 } };
    for (unsigned c = 0; c < n; c++) {
        t.width[c] = (unsigned)(widths >> (8 * c)) & 0xffu;
    }
    for (unsigned need = 0, c = 0; need <= 8; need++) {
        while (t.width[c] < need && c + 1 < n) {
            c++;
        }
        t.of_need[need] = c;
    }
    return t;
}

static unsigned bytes_needed(uint64_t u)
{
    return u ? (unsigned)((71 - __builtin_clzll(u)) / 8) : 0;
}

/* The bits of an access of 1 << shift bytes: the plugin never records more
 * than 8; the upper bits of a narrower value are not the guest's.  Shifts past
 * 3 have no bits (a decoder refuses them). */
static const uint64_t WIDTH_MASK[8] = { 0xffull, 0xffffull, 0xffffffffull, ~0ull, 0, 0, 0, 0 };

/* The low `width` bytes of a word (width 0..8). */
static const uint64_t BYTE_MASK[9] = {
    0, 0xffull, 0xffffull, 0xffffffull, 0xffffffffull, 0xffffffffffull, 0xffffffffffffull, 0xffffffffffffffull, ~0ull,
};

static uint64_t zigzag(uint64_t d)
{
    return (d << 1) ^ (uint64_t)((int64_t)d >> 63);
}

static uint64_t unzigzag(uint64_t u)
{
    return (u >> 1) ^ (uint64_t)-(int64_t)(u & 1);
}

static void new_packet(struct predictor *p)
{
    if (++p->epoch == 0) { /* wrapped: forget every slot for real */
        memset(p->slot, 0, sizeof(p->slot));
        p->epoch = 1;
    }
}

static struct slot *slot_for(struct predictor *p, uint32_t block, uint32_t k)
{
    /* a block's slots side by side: its accesses share cache lines */
    uint32_t h = ((block * CN_MEM_SLOT_MUL_BLOCK) >> (32 - CN_MEM_SLOT_BITS)) + k;
    struct slot *s = &p->slot[h & (N_SLOTS - 1)];
    if (s->epoch != p->epoch) {
        *s = (struct slot){ 0, 0, 0, p->epoch };
    }
    return s;
}

/* Walks the records' links: which block each access belongs to and its
 * position among that block's accesses (the slot key). */
struct links {
    const uint32_t *exec;
    uint32_t n_exec;
    uint32_t link, k;
    bool started; /* an access came before: k counts from it */
};

static uint32_t block_of(const struct links *w)
{
    return w->link >= 1 && w->link <= w->n_exec ? w->exec[w->link - 1] : 0;
}

static void advance(struct links *w, uint32_t link)
{
    w->k = w->started && link == w->link ? w->k + 1 : 0;
    w->link = link;
    w->started = true;
}

/* Payload bytes are written and read a whole 8-byte word at a time (the
 * cursor then moves by the payload's width), so every buffer they go through
 * has 8 spare bytes after each group. */
static void store8(uint8_t *p, uint64_t u)
{
    memcpy(p, &u, 8); /* little-endian host: the low bytes first */
}

static uint64_t load8(const uint8_t *p)
{
    uint64_t u;
    memcpy(&u, p, 8);
    return u;
}

/* Payload groups of one field, staged apart while encoding or decoding. */
struct groups {
    uint8_t *at[VALUE_CLASSES];   /* where each class's payloads start */
    size_t used[VALUE_CLASSES];   /* bytes of each, so far */
};

/* Stage groups for n payloads of every class in buf; returns the bytes used. */
static size_t stage_groups(struct groups *g, const struct classes *t, uint8_t *buf, uint32_t n)
{
    size_t off = 0;
    for (unsigned c = 0; c < t->n; c++) {
        g->at[c] = buf + off;
        g->used[c] = 0;
        off += (size_t)n * t->width[c] + 8;
    }
    return off;
}

static void put_payload(struct groups *g, const struct classes *t, unsigned c, uint64_t u)
{
    store8(g->at[c] + g->used[c], u);
    g->used[c] += t->width[c];
}

/* The groups one after the other at out; returns the end. */
static char *put_groups(char *out, const struct groups *g, const struct classes *t)
{
    for (unsigned c = 1; c < t->n; c++) { /* class 0 has no bytes */
        memcpy(out, g->at[c], g->used[c]);
        out += g->used[c];
    }
    return out;
}

/* What differs between memory accesses and register records: where the link
 * sits in the info word, what the other bits ("low", at most 14) are, and
 * which value bits a record may have. */
struct kind {
    bool has_addr;
    unsigned link_bits;
};

static const struct kind MEM = { true, 32 - CN_MEMINFO_LINK_SHIFT };
static const struct kind REG = { false, 32 - CN_REGINFO_LINK_SHIFT - 2 };

static inline uint32_t link_of(const struct kind *k, uint32_t info)
{
    return k->has_addr ? info >> CN_MEMINFO_LINK_SHIFT : (info >> CN_REGINFO_LINK_SHIFT) & CN_REGINFO_LINK_MASK;
}

/* register records: the number, then CHANGED and KEYFRAME as bits 8-9 */
static inline uint32_t low_of(const struct kind *k, uint32_t info)
{
    return k->has_addr ? info & CN_MEMINFO_LOW_MASK : (info & CN_REGINFO_NUMBER_MASK) | (info >> 30) << 8;
}

static inline uint32_t info_of(const struct kind *k, uint32_t link, uint32_t low)
{
    if (k->has_addr) {
        return link << CN_MEMINFO_LINK_SHIFT | low;
    }
    return (low & CN_REGINFO_NUMBER_MASK) | link << CN_REGINFO_LINK_SHIFT | (low >> 8) << 30;
}

static inline uint32_t low_limit(const struct kind *k)
{
    return k->has_addr ? CN_MEMINFO_LOW_MASK : 0x3ffu;
}

/* The value bits a record may have: an access of 1 << shift bytes has that
 * many (the upper bits of a narrower value are not the guest's), a register
 * 64. */
static inline uint64_t value_mask(const struct kind *k, uint32_t low)
{
    return k->has_addr ? WIDTH_MASK[low & CN_MEMINFO_SHIFT_MASK] : ~0ull;
}

/* Staged payload groups (each class's width, 8 spare bytes after each), control
 * bytes, low info bits and link steps for n accesses. */
#define STAGE_BYTES(n) ((size_t)(n) * (1 + 3 + 8 + 1 + 2 + 3 + 4 + 5 + 6 + 8 + 1 + 2 + 4) + 8 * 16)

/* Bytes of scratch one encoder or decoder needs (zeroed before its first use,
 * then reused packet after packet; CN_CAP_REG = CN_CAP_MEM). */
CN_EXPORT size_t cn_codec_scratch_size(void)
{
    return sizeof(struct predictor) + STAGE_BYTES(CN_CAP_MEM);
}

/* Most bytes the three memory sections of n accesses take, together. */
CN_EXPORT size_t cn_mem_max_encoded(uint32_t n)
{
    return (size_t)n * (8 + 8 + 1 + 2 + 4);
}

/* ... and the two register sections of n register records. */
CN_EXPORT size_t cn_reg_max_encoded(uint32_t n)
{
    return (size_t)n * (8 + 1 + 2 + 4);
}

/* Writes the sections (address payloads, if the kind has them; value
 * payloads; control bytes, low bits and link steps) one after the other at
 * out, their sizes to size[]. */
static inline __attribute__((always_inline)) size_t encode(const struct kind *kind, const uint64_t *addr,
                                                            const uint64_t *value, const uint32_t *info, uint32_t n,
                                                            const uint32_t *exec, uint32_t n_exec, char *out,
                                                            void *scratch, size_t *size)
{
    const struct classes at = make_classes(CN_MEMCTL_ADDR_WIDTHS, ADDR_CLASSES);
    const struct classes vt = make_classes(CN_MEMCTL_VALUE_WIDTHS, VALUE_CLASSES);
    struct predictor *p = scratch;
    struct groups ag, vg;
    uint8_t *buf = (uint8_t *)(p + 1);
    buf += stage_groups(&ag, &at, buf, n);
    buf += stage_groups(&vg, &vt, buf, n);
    uint8_t *ctl = buf, *lows = ctl + n + 8, *steps = lows + 2 * (size_t)n + 8;
    size_t n_low = 0, n_step = 0;
    struct links w = { exec, n_exec, 0, 0, false };
    new_packet(p);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t link = link_of(kind, info[i]), low = low_of(kind, info[i]);
        uint32_t step = link - w.link;
        unsigned lc = step < CN_MEMCTL_LINK_EXPLICIT ? step : CN_MEMCTL_LINK_EXPLICIT;
        advance(&w, link);
        struct slot *s = slot_for(p, block_of(&w), w.k);
        uint64_t a = kind->has_addr ? addr[i] : 0;
        uint64_t v = value[i] & value_mask(kind, low);
        uint64_t ra = zigzag(a - s->addr), rv = zigzag(v - s->value);
        unsigned ac = at.of_need[bytes_needed(ra)], vc = vt.of_need[bytes_needed(rv)];
        put_payload(&ag, &at, ac, ra);
        put_payload(&vg, &vt, vc, rv);
        bool explicit_low = low != s->low;
        memcpy(lows + 2 * n_low, &low, 2);
        n_low += explicit_low;
        memcpy(steps + 4 * n_step, &step, 4);
        n_step += lc == CN_MEMCTL_LINK_EXPLICIT;
        ctl[i] = (uint8_t)(ac << CN_MEMCTL_ADDR_SHIFT | vc << CN_MEMCTL_VALUE_SHIFT |
                           (explicit_low ? CN_MEMCTL_INFO_EXPLICIT : 0) | lc << CN_MEMCTL_LINK_SHIFT);
        *s = (struct slot){ a, v, low, p->epoch };
    }
    char *start = out, *end = out;
    size_t *next = size;
    if (kind->has_addr) {
        end = put_groups(out, &ag, &at);
        *next++ = (size_t)(end - out);
        out = end;
    }
    end = put_groups(out, &vg, &vt);
    *next++ = (size_t)(end - out);
    out = end;
    memcpy(end, ctl, n);
    memcpy(end += n, lows, 2 * n_low);
    memcpy(end += 2 * n_low, steps, 4 * n_step);
    end += 4 * n_step;
    *next = (size_t)(end - out);
    return (size_t)(end - start);
}

/* Encode n accesses (n <= CN_CAP_MEM) of a packet whose EXEC section is
 * exec[n_exec].  Writes the MEM_ADDR, MEM_VALUE and MEM_INFO sections one
 * after the other at out (room for cn_mem_max_encoded(n) bytes), their sizes
 * in bytes to size[0..2]; returns the total.  scratch holds
 * cn_codec_scratch_size() bytes, zeroed before its first use. */
CN_EXPORT size_t cn_mem_encode(const uint64_t *addr, const uint64_t *value, const uint32_t *info, uint32_t n,
                               const uint32_t *exec, uint32_t n_exec, char *out, void *scratch, size_t size[3])
{
    return encode(&MEM, addr, value, info, n, exec, n_exec, out, scratch, size);
}

/* The same for n register records (n <= CN_CAP_REG): REG_VALUE, then
 * REG_INFO, sizes to size[0..1]. */
CN_EXPORT size_t cn_reg_encode(const uint64_t *value, const uint32_t *info, uint32_t n, const uint32_t *exec,
                               uint32_t n_exec, char *out, void *scratch, size_t size[2])
{
    return encode(&REG, NULL, value, info, n, exec, n_exec, out, scratch, size);
}

/* Lay out a field's groups in buf (each followed by 8 spare bytes) from the
 * section's bytes, given each class's count; checks the section's size. */
static int place_groups(struct groups *g, const struct classes *t, const size_t *count, const uint8_t *in,
                        size_t in_size, uint8_t *buf)
{
    size_t need = 0;
    for (unsigned c = 0; c < t->n; c++) {
        need += count[c] * t->width[c];
    }
    if (need != in_size) {
        return need > in_size ? CN_MEM_SHORT : CN_MEM_LONG;
    }
    for (unsigned c = 0; c < t->n; c++) {
        size_t bytes = count[c] * t->width[c];
        if (bytes) {
            memcpy(buf, in, bytes);
        }
        memset(buf + bytes, 0, 8);
        g->at[c] = buf;
        g->used[c] = 0;
        buf += bytes + 8;
        in += bytes;
    }
    return CN_MEM_OK;
}

static uint64_t take_payload(struct groups *g, const struct classes *t, unsigned c)
{
    uint64_t u = load8(g->at[c] + g->used[c]) & BYTE_MASK[t->width[c]];
    g->used[c] += t->width[c];
    return u;
}

static inline __attribute__((always_inline)) int decode(const struct kind *kind, const uint8_t *addr_in,
                                                         size_t addr_size, const uint8_t *value_in, size_t value_size,
                                                         const uint8_t *info_in, size_t info_size, uint32_t n,
                                                         const uint32_t *exec, uint32_t n_exec, uint64_t *addr,
                                                         uint64_t *value, uint32_t *info, void *scratch)
{
    if (n > CN_CAP_MEM) {
        return CN_MEM_LONG;
    }
    if (info_size < n) {
        return CN_MEM_SHORT;
    }
    const struct classes at = make_classes(CN_MEMCTL_ADDR_WIDTHS, ADDR_CLASSES);
    const struct classes vt = make_classes(CN_MEMCTL_VALUE_WIDTHS, VALUE_CLASSES);
    const uint8_t *ctl = info_in;
    size_t hist[256] = { 0 };
    for (uint32_t i = 0; i < n; i++) {
        hist[ctl[i]]++;
    }
    size_t count_addr[ADDR_CLASSES] = { 0 }, count_value[VALUE_CLASSES] = { 0 }, n_low = 0, n_step = 0;
    for (unsigned b = 0; b < 256; b++) {
        count_addr[(b >> CN_MEMCTL_ADDR_SHIFT) & CN_MEMCTL_ADDR_MASK] += hist[b];
        count_value[(b >> CN_MEMCTL_VALUE_SHIFT) & CN_MEMCTL_VALUE_MASK] += hist[b];
        n_low += b & CN_MEMCTL_INFO_EXPLICIT ? hist[b] : 0;
        n_step += (b >> CN_MEMCTL_LINK_SHIFT) == CN_MEMCTL_LINK_EXPLICIT ? hist[b] : 0;
    }
    size_t info_need = (size_t)n + 2 * n_low + 4 * n_step;
    if (info_need != info_size) {
        return info_need > info_size ? CN_MEM_SHORT : CN_MEM_LONG;
    }
    struct predictor *p = scratch;
    uint8_t *stage = (uint8_t *)(p + 1);
    struct groups ag, vg;
    /* register records have no addresses: any address class but 0 is too long */
    int err = place_groups(&ag, &at, count_addr, addr_in, kind->has_addr ? addr_size : 0, stage);
    if (!err) {
        err = place_groups(&vg, &vt, count_value, value_in, value_size, stage + addr_size + 8 * ADDR_CLASSES);
    }
    if (err) {
        return err;
    }
    const uint8_t *lows = info_in + n, *steps = lows + 2 * n_low;
    uint64_t wide = 0;
    uint32_t bad_info = 0;
    struct links w = { exec, n_exec, 0, 0, false };
    new_packet(p);
    for (uint32_t i = 0; i < n; i++) {
        unsigned ac = (ctl[i] >> CN_MEMCTL_ADDR_SHIFT) & CN_MEMCTL_ADDR_MASK;
        unsigned vc = (ctl[i] >> CN_MEMCTL_VALUE_SHIFT) & CN_MEMCTL_VALUE_MASK;
        uint32_t step = ctl[i] >> CN_MEMCTL_LINK_SHIFT;
        if (step == CN_MEMCTL_LINK_EXPLICIT) {
            memcpy(&step, steps, 4);
            steps += 4;
        }
        uint32_t link = w.link + step; /* mod 2^32: a salvaged lane's links may go back */
        bad_info |= link >> kind->link_bits;
        advance(&w, link);
        struct slot *s = slot_for(p, block_of(&w), w.k);
        uint32_t low = s->low;
        if (ctl[i] & CN_MEMCTL_INFO_EXPLICIT) {
            uint16_t stored;
            memcpy(&stored, lows, 2);
            lows += 2;
            low = stored;
            bad_info |= low & ~low_limit(kind);
        }
        uint64_t a = s->addr + unzigzag(take_payload(&ag, &at, ac));
        uint64_t v = s->value + unzigzag(take_payload(&vg, &vt, vc));
        wide |= (v & ~value_mask(kind, low)) | (kind->has_addr && (low & CN_MEMINFO_SHIFT_MASK) > 3);
        if (kind->has_addr) {
            addr[i] = a;
        }
        value[i] = v;
        info[i] = info_of(kind, link, low);
        *s = (struct slot){ a, v, low, p->epoch };
    }
    return bad_info ? CN_MEM_BAD_INFO : wide ? CN_MEM_WIDE : CN_MEM_OK;
}

/* Decode n accesses (n <= CN_CAP_MEM) from the three sections (sizes in
 * bytes) of a packet whose EXEC section is exec[n_exec]; returns CN_MEM_OK or
 * an error above.  scratch as for cn_mem_encode. */
CN_EXPORT int cn_mem_decode(const uint8_t *addr_in, size_t addr_size, const uint8_t *value_in, size_t value_size,
                            const uint8_t *info_in, size_t info_size, uint32_t n, const uint32_t *exec,
                            uint32_t n_exec, uint64_t *addr, uint64_t *value, uint32_t *info, void *scratch)
{
    return decode(&MEM, addr_in, addr_size, value_in, value_size, info_in, info_size, n, exec, n_exec, addr, value,
                  info, scratch);
}

/* The same for n register records from REG_VALUE and REG_INFO. */
CN_EXPORT int cn_reg_decode(const uint8_t *value_in, size_t value_size, const uint8_t *info_in, size_t info_size,
                            uint32_t n, const uint32_t *exec, uint32_t n_exec, uint64_t *value, uint32_t *info,
                            void *scratch)
{
    return decode(&REG, NULL, 0, value_in, value_size, info_in, info_size, n, exec, n_exec, NULL, value, info,
                  scratch);
}
