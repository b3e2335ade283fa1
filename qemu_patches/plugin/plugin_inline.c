/*
 * plugin_inline.c -- records written by QEMU's generated code, where QEMU has
 * qemu_patches/0004-plugins-inline-record.patch.
 *
 * There the plugin registers no callback per block or per access.  Each
 * vCPU has a record buffer (struct qemu_plugin_record_buffer, a scoreboard
 * entry), and the code QEMU generates for a block appends, with a few stores
 * and no call:
 *   exec  the block's struct cn_tb pointer | CN_REC_EXEC at the block's
 *         start (calloc'ed: its low 4 bits are free), followed by
 *         the recorded registers' values (one u64 each, in number order)
 *         where registers are recorded;
 *   end   the instruction index << 8 | CN_REC_END at the start of the
 *         block's last instruction (multi-instruction blocks): the
 *         block-end counter of plugin_exec.c, exact because each thread
 *         has its own stream;
 *   mem   after each access: the info word's instruction index, QEMU's
 *         meminfo (size, load or store), the address and the value
 *         (24 bytes; 32 with the high half of a 16-byte access).
 * The records go into the lane exactly as the callbacks of plugin_exec.c,
 * plugin_mem.c and plugin_regs.c would have put them -- the same functions
 * do it (cn_exec_block, cn_exec_last_insn, cn_put_access) -- when the buffer
 * is emptied: when QEMU finds it past its limit at a block's start (about
 * every CN_INLINE_LIMIT bytes, between two blocks), before every syscall and
 * at its return (so segments close where they would, and a fork's child
 * inherits no records of the parent), at thread exit and at exit_group,
 * which empties the other threads' buffers too (their lanes stay for the
 * recorder to salvage).  A record of an access is written after the access
 * completed: an access that faults leaves none, as with a callback.
 *
 * What differs from the callbacks: a block's exec and an access reach the
 * lane up to one buffer later, so ordering segments draw their global
 * positions up to one buffer late (and one segment per thread between two
 * syscalls or buffers can be drawn next to each other); a QEMU killed with
 * SIGKILL takes each thread's unflushed records with it (the trace is
 * marked incomplete in any case).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plugin.h"

#if CN_QEMU_PLUGIN_API >= 4

/* Record kinds in the low 2 bits of a block or instruction record. */
#define CN_REC_EXEC 1u
#define CN_REC_END 2u
#define CN_REC_KIND 3u
/* A memory record's meminfo has a load/store field (bits 16-17) that is never
 * 0; the plugin's own records keep those bits (48-49 of the u64) at 0. */
#define CN_REC_IS_MEM(head) ((((head) >> 48) & 3u) != 0)

/* Bytes of records between two flushes: about 2,700 accesses, small enough
 * to stay in the cache while QEMU writes them and the plugin reads them. */
#define CN_INLINE_LIMIT (64u * 1024u)

static struct qemu_plugin_scoreboard *buffers;
static qemu_plugin_u64 buffer_entry;
static struct qemu_plugin_record_regs *regset; /* NULL: no registers in exec records */
static unsigned int n_regs;

/* One per vCPU index (QEMU reuses an index after its thread ended): the
 * buffer's memory, the thread running the vCPU and the lock that lets
 * exit_group's thread take its records out. */
struct vcpu_slot {
    pthread_mutex_t lock;
    struct cn_thread *thread;
    uint8_t *memory;
};
static struct vcpu_slot **slots;
static size_t n_slots;
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;

static void fatal(const char *what)
{
    fprintf(stderr, "cannoli plugin: %s\n", what);
    abort();
}

static struct vcpu_slot *slot_of(unsigned int vcpu)
{
    pthread_mutex_lock(&slots_lock);
    if (vcpu >= n_slots) {
        size_t n = n_slots ? n_slots : 16;
        while (n <= vcpu) {
            n *= 2;
        }
        struct vcpu_slot **grown = realloc(slots, n * sizeof(*grown));
        if (!grown) {
            fatal("out of memory for the vCPU table");
        }
        memset(grown + n_slots, 0, (n - n_slots) * sizeof(*grown));
        slots = grown;
        n_slots = n;
    }
    if (!slots[vcpu]) {
        struct vcpu_slot *s = calloc(1, sizeof(*s));
        if (!s || posix_memalign((void **)&s->memory, 64, CN_INLINE_LIMIT + QEMU_PLUGIN_RECORD_TB_MAX) != 0) {
            fatal("out of memory for a record buffer");
        }
        pthread_mutex_init(&s->lock, NULL);
        slots[vcpu] = s;
    }
    struct vcpu_slot *s = slots[vcpu];
    pthread_mutex_unlock(&slots_lock);
    return s;
}

/* meminfo -> CN_MEMINFO size shift (0..4) | CN_MEMINFO_STORE, asked of QEMU
 * once per meminfo value (a program uses a few dozen). */
#define CN_MEMINFO_CACHED (1u << 18)
static uint8_t access_bits_cache[CN_MEMINFO_CACHED]; /* bit 7: known */

static inline unsigned access_bits(uint32_t meminfo)
{
    if (CN_LIKELY(meminfo < CN_MEMINFO_CACHED && access_bits_cache[meminfo])) {
        return access_bits_cache[meminfo] & 0x7fu;
    }
    unsigned bits = qemu_plugin_mem_size_shift(meminfo) | (qemu_plugin_mem_is_store(meminfo) ? CN_MEMINFO_STORE : 0);
    if (meminfo < CN_MEMINFO_CACHED) {
        __atomic_store_n(&access_bits_cache[meminfo], (uint8_t)(bits | 0x80u), __ATOMIC_RELAXED);
    }
    return bits;
}

static inline const uint8_t *take_access(struct cn_thread *t, const uint8_t *p, uint64_t head)
{
    uint32_t word = (uint32_t)head; /* the instruction index, from translation */
    unsigned bits = access_bits((uint32_t)(head >> 32));
    unsigned shift = bits & CN_MEMINFO_SHIFT_MASK;
    uint64_t vaddr, value;
    memcpy(&vaddr, p + 8, 8);
    memcpy(&value, p + 16, 8);
    /* 16 bytes: two 8-byte halves, as plugin_mem.c records them */
    word |= (shift > 3 ? 3 : shift) | (bits & CN_MEMINFO_STORE);
    cn_put_access(t, vaddr, value, word);
    if (shift > 3) {
        memcpy(&value, p + 24, 8);
        cn_put_access(t, vaddr + 8, value, word);
    }
    t->lane->cur_accessed = ((uint32_t)head >> CN_MEMINFO_INSN_SHIFT) + 1u;
    return p + (shift > 3 ? 32 : 24);
}

/* Move the records of thread t's buffer into its lane; t's lock is held. */
static void take_records(struct cn_thread *t)
{
    qemu_plugin_record_buffer *rb = qemu_plugin_scoreboard_find(buffers, t->vcpu);
    const uint8_t *p = rb->base, *end = rb->cursor;
    if (!p || p == end) {
        return;
    }
    if (!t->lane) {
        cn_thread_begin(t);
    }
    while (p < end) {
        uint64_t head;
        memcpy(&head, p, 8);
        if (CN_REC_IS_MEM(head)) {
            p = take_access(t, p, head);
        } else if ((head & CN_REC_KIND) == CN_REC_EXEC) {
            const struct cn_tb *d = (const struct cn_tb *)(uintptr_t)(head & ~(uint64_t)CN_REC_KIND);
            const uint64_t *values = regset ? (const uint64_t *)(p + 8) : NULL;
            p += 8 + (regset ? 8u * n_regs : 0u);
            cn_exec_block(t, d, values);
        } else if ((head & CN_REC_KIND) == CN_REC_END) {
            cn_exec_last_insn(t, (uint32_t)(head >> 8));
            p += 8;
        } else {
            fatal("a record of an unknown kind in the record buffer");
        }
    }
    rb->cursor = rb->base;
}

static void lock_slot(struct cn_thread *t)
{
    pthread_mutex_lock(&slot_of(t->vcpu)->lock);
}

static void unlock_slot(struct cn_thread *t)
{
    pthread_mutex_unlock(&slot_of(t->vcpu)->lock);
}

/* (a thread that never ran code, e.g. QEMU failed before, has no buffer) */
void cn_inline_lock(struct cn_thread *t)
{
    if (cn_cfg.inline_records && t->inline_ready) {
        lock_slot(t);
        take_records(t);
    }
}

void cn_inline_unlock(struct cn_thread *t)
{
    if (cn_cfg.inline_records && t->inline_ready) {
        unlock_slot(t);
    }
}

void cn_inline_flush(struct cn_thread *t)
{
    cn_inline_lock(t);
    cn_inline_unlock(t);
}

/* QEMU found the buffer past its limit (at a block's start, or at the head of
 * a loop inside a block, or for an access made by a helper). */
static void buffer_full(unsigned int vcpu_index, void *userdata)
{
    struct cn_thread *t = &cn_self;
    (void)userdata;
    t->vcpu = vcpu_index;
    cn_inline_flush(t);
}

void cn_inline_init(void)
{
    buffers = qemu_plugin_scoreboard_new(sizeof(qemu_plugin_record_buffer));
    buffer_entry = (qemu_plugin_u64){ buffers, 0 };
    cn_cfg.ring->hits_capacity = 0; /* no block-end counters: end records */
}

void cn_inline_regs_select(const char *const *names, unsigned int n)
{
    if (!cn_cfg.inline_records || n == 0) {
        return;
    }
    regset = qemu_plugin_record_regs_new(names, n);
    if (regset) {
        n_regs = n;
        return;
    }
    /* this QEMU cannot copy one of these registers (arm, riscv, mips): record
     * through callbacks, which read them through QEMU (decided before the
     * first block is translated: the first vCPU's init runs before its code) */
    cn_cfg.inline_records = false;
    cn_cfg.ring->inline_records = 0;
    cn_compat_init();
}

/* In the vCPU's own thread, before it runs code: its buffer, and its stream. */
void cn_inline_vcpu_init(unsigned int vcpu_index)
{
    if (!cn_cfg.inline_records) {
        return;
    }
    struct vcpu_slot *s = slot_of(vcpu_index);
    qemu_plugin_record_buffer *rb = qemu_plugin_scoreboard_find(buffers, vcpu_index);
    rb->base = s->memory;
    rb->cursor = s->memory;
    rb->limit = s->memory + CN_INLINE_LIMIT;
    rb->end = rb->limit + QEMU_PLUGIN_RECORD_TB_MAX;
    rb->full = buffer_full;
    rb->userdata = NULL;
    struct cn_thread *t = &cn_self;
    t->vcpu = vcpu_index;
    t->inline_ready = true;
    pthread_mutex_lock(&s->lock);
    s->thread = t;
    cn_thread_self(); /* the stream begins here: exit_group may have to close it */
    pthread_mutex_unlock(&s->lock);
}

/* The thread is gone (its thread-local state with it). */
void cn_inline_forget(struct cn_thread *t)
{
    if (cn_cfg.inline_records && t->inline_ready) {
        struct vcpu_slot *s = slot_of(t->vcpu);
        if (s->thread == t) {
            s->thread = NULL;
        }
    }
}

void cn_inline_flush_others(struct cn_thread *self)
{
    if (!cn_cfg.inline_records) {
        return;
    }
    /* the slots, then each slot's lock: never both at once (vcpu_exit holds a
     * slot's lock and then looks up slots) */
    pthread_mutex_lock(&slots_lock);
    size_t n = n_slots;
    struct vcpu_slot **all = n ? malloc(n * sizeof(*all)) : NULL;
    if (all) {
        memcpy(all, slots, n * sizeof(*all));
    }
    pthread_mutex_unlock(&slots_lock);
    for (size_t v = 0; all && v < n; v++) {
        struct vcpu_slot *s = all[v];
        if (!s) {
            continue;
        }
        pthread_mutex_lock(&s->lock);
        if (s->thread && s->thread != self) {
            take_records(s->thread);
        }
        pthread_mutex_unlock(&s->lock);
    }
    free(all);
}

/* A fork's child: only the forking thread is left.  Its buffer was emptied at
 * the fork's syscall entry (what it held was the parent's); the others' slots
 * name threads of the parent, and their locks may have been held there. */
void cn_inline_after_fork_child(struct cn_thread *t)
{
    if (!cn_cfg.inline_records || !t->inline_ready) {
        return;
    }
    pthread_mutex_init(&slots_lock, NULL);
    for (size_t v = 0; v < n_slots; v++) {
        if (slots[v]) {
            pthread_mutex_init(&slots[v]->lock, NULL);
            slots[v]->thread = v == t->vcpu ? t : NULL;
        }
    }
    qemu_plugin_record_buffer *rb = qemu_plugin_scoreboard_find(buffers, t->vcpu);
    rb->cursor = rb->base;
}

void cn_inline_instrument(struct qemu_plugin_tb *tb, struct cn_tb *d)
{
    uint64_t self = (uint64_t)(uintptr_t)d;
    if ((self >> 48) || (self & CN_REC_KIND)) {
        fatal("a block description at an address an exec record cannot hold");
    }
    qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_RECORD, buffer_entry,
                                                      self | CN_REC_EXEC);
    if (regset) {
        qemu_plugin_register_vcpu_tb_record_regs_per_vcpu(tb, buffer_entry, regset);
    }
    size_t last = d->n_insns - 1u;
    if (last > 0) {
        qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(qemu_plugin_tb_get_insn(tb, last),
                                                            QEMU_PLUGIN_INLINE_RECORD, buffer_entry,
                                                            (uint64_t)last << 8 | CN_REC_END);
    }
    for (size_t i = 0; cn_cfg.record_mem && i < d->n_insns; i++) {
        qemu_plugin_register_vcpu_mem_inline_per_vcpu(qemu_plugin_tb_get_insn(tb, i), QEMU_PLUGIN_MEM_RW,
                                                       QEMU_PLUGIN_INLINE_RECORD, buffer_entry,
                                                       (uint64_t)i << CN_MEMINFO_INSN_SHIFT);
    }
}

#else /* plugin API < 4: no QEMU with the patch */

void cn_inline_init(void)
{
}

void cn_inline_regs_select(const char *const *names, unsigned int n)
{
    (void)names, (void)n;
}

void cn_inline_vcpu_init(unsigned int vcpu_index)
{
    (void)vcpu_index;
}

void cn_inline_instrument(struct qemu_plugin_tb *tb, struct cn_tb *d)
{
    (void)tb, (void)d;
}

void cn_inline_lock(struct cn_thread *t)
{
    (void)t;
}

void cn_inline_unlock(struct cn_thread *t)
{
    (void)t;
}

void cn_inline_flush(struct cn_thread *t)
{
    (void)t;
}

void cn_inline_forget(struct cn_thread *t)
{
    (void)t;
}

void cn_inline_flush_others(struct cn_thread *self)
{
    (void)self;
}

void cn_inline_after_fork_child(struct cn_thread *t)
{
    (void)t;
}

#endif
