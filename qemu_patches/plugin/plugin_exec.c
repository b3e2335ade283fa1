/*
 * plugin_exec.c -- block translation and execution, with exact instruction
 * counts.
 *
 * Translation time (vcpu_tb_trans, once per block): describe the block, give
 * it an id, write its definition (pc, instruction sizes, bytes) to the lane,
 * and register the execution-time callbacks.
 *
 * Execution time, per executed block: vcpu_tb_exec appends the block id to the
 * lane's exec section.  A block does not always run to its end: a guest fault,
 * a self-modifying-code restart, or (QEMU 7.2) an instruction that QEMU dropped
 * from the block after the plugin saw it because it crossed a page.  So the
 * last instruction of every multi-instruction block bumps a block-end counter
 * in the ring (an inline add, no callback; cannoli_ring.h), and vcpu_tb_exec
 * keeps a snapshot of the counter of the block it starts.  At the next block,
 * an unchanged counter means the last instruction never started, and the
 * previous block is resolved:
 *   - the new pc is the pc of instruction k of the old block -> k ran;
 *   - the new pc is a signal handler's entry (or the thread is dying at
 *     exit) -> a signal stopped it: the instructions up to the faulting one
 *     ran, and the faulting one is the first after the last instruction that
 *     completed a memory access that can fault (../fault_point.c);
 *   - otherwise the last instruction did run: the counter lost an update.
 *
 * In the lane, cur_accessed is 1 + the index of the last instruction that
 * completed a memory access (0: none yet; a syscall sets n_insns); the
 * recorder turns it into the packet's "index of the last instruction known
 * to have started".
 * The exec entry is then rewritten to a *twin* block: the same pc with only
 * the instructions that ran, so every exec row's block has the exact count.
 *
 * With plugin API >= 2 the counters are per vCPU and exact (plugin_compat.c).
 * Where QEMU writes the records itself (qemu_patches/0004, plugin_inline.c),
 * the counter is a record too: the last instruction of a block appends one,
 * and a block whose record is missing when the next block starts was cut
 * short (exact: one record stream per thread).
 * With API 1 they are shared by all threads, and the inline add is a plain
 * load-add-store: threads running the same block at once lose updates, and a
 * counter can look unchanged although the last instruction ran.  Only a
 * signal moves a thread from inside a block to a pc outside it, and signals
 * enter handlers that rt_sigaction installed (plugin_syscall.c), so there an
 * unchanged counter counts as "cut short" only when the next pc is such a
 * handler (or the thread ends there).  The other way round, a block cut short
 * in one thread while another thread finishes the same block at that moment
 * is taken as finished.  Faults are rare and that window is a few
 * instructions wide; docs/format.md states it.
 */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plugin.h"
#include "../fault_point.h"

static pthread_mutex_t twin_lock = PTHREAD_MUTEX_INITIALIZER;

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        abort();
    }
    return p;
}

static void emit_block_def(struct cn_thread *t, const struct cn_tb *d, uint32_t id,
                           uint16_t n_insns, uint16_t flags)
{
    uint32_t n_bytes = 0;
    for (uint16_t i = 0; i < n_insns; i++) {
        n_bytes += d->insn_size[i];
    }
    struct cn_lane_header *lane = t->lane;
    if (lane->count[CN_SEC_BLOCK] + 1 > CN_CAP_BLOCK ||
        lane->count[CN_SEC_INSN_SIZE] + n_insns > CN_CAP_INSN_SIZE ||
        lane->count[CN_SEC_INSN_BYTES] + n_bytes > CN_CAP_INSN_BYTES) {
        cn_lane_rollover(t, false);
        lane = t->lane;
    }
    memcpy((uint8_t *)cn_sec(lane, CN_SEC_INSN_SIZE) + lane->count[CN_SEC_INSN_SIZE],
           d->insn_size, n_insns);
    memcpy((uint8_t *)cn_sec(lane, CN_SEC_INSN_BYTES) + lane->count[CN_SEC_INSN_BYTES],
           d->bytes, n_bytes);
    struct cn_block *b = (struct cn_block *)cn_sec(lane, CN_SEC_BLOCK) + lane->count[CN_SEC_BLOCK];
    b->pc = d->pc;
    b->block_id = id;
    b->n_insns = n_insns;
    b->flags = flags;
    b->n_bytes = n_bytes;
    b->base_id = d->block_id;
    cn_count_set(lane, CN_SEC_INSN_SIZE, lane->count[CN_SEC_INSN_SIZE] + n_insns);
    cn_count_set(lane, CN_SEC_INSN_BYTES, lane->count[CN_SEC_INSN_BYTES] + n_bytes);
    cn_count_set(lane, CN_SEC_BLOCK, lane->count[CN_SEC_BLOCK] + 1);
}

static uint32_t new_block_id(void)
{
    return (uint32_t)__atomic_fetch_add(&cn_cfg.ring->next_block_id, 1, __ATOMIC_RELAXED);
}

/* The id of the block made of the first k instructions of d (0 < k < n). */
static uint32_t twin_block_id(struct cn_thread *t, struct cn_tb *d, uint16_t k)
{
    pthread_mutex_lock(&twin_lock);
    if (!d->twin_id) {
        d->twin_id = xcalloc(d->n_insns, sizeof(uint32_t));
    }
    uint32_t id = d->twin_id[k];
    if (!id) {
        id = new_block_id();
        d->twin_id[k] = id;
        emit_block_def(t, d, id, k, CN_BLOCK_TWIN);
    }
    pthread_mutex_unlock(&twin_lock);
    return id;
}

static uint16_t executed_insns(const struct cn_tb *d, uint32_t accessed, uint64_t next_pc, bool dying)
{
    for (uint32_t k = accessed ? accessed : 1; !dying && k < d->n_insns; k++) {
        if (d->insn_pc[k] == next_pc) {
            return (uint16_t)k;
        }
    }
    if (!dying && !cn_compat_exact_block_ends && !cn_may_be_signal_entry(next_pc)) {
        return d->n_insns; /* API 1: the counter lost an update */
    }
    return (uint16_t)cn_fault_point(cn_cfg.target, d->pc, d->bytes, d->insn_size, d->n_insns, accessed);
}

/* The previous block of this thread stopped before its last instruction. */
static void resolve_interrupted(struct cn_thread *t, uint64_t next_pc, bool dying)
{
    struct cn_tb *d = (struct cn_tb *)t->cur;
    uint16_t ran = executed_insns(d, t->lane->cur_accessed, next_pc, dying);
    uint64_t ordinal = t->exec_ord - 1;
    t->lane->cur_done = 1;
    t->regs_resync = true; /* a fault: the signal frame changed registers no instruction did */
    if (ran >= d->n_insns) {
        return;
    }
    /* before the twin's definition, which may roll the lane over and close the segment */
    t->seg_insns -= d->n_insns - ran;
    t->cur_insns = ran;
    uint32_t id = twin_block_id(t, d, ran);
    struct cn_lane_header *lane = t->lane;
    uint32_t n = lane->count[CN_SEC_EXEC];
    /* rewritten where this lane holds the exec's own record (not a continuation) */
    bool own = n > 1 || !(lane->flags & CN_PACKET_CONTINUES);
    if (n > 0 && own && lane->exec_first + n - 1 == ordinal) {
        ((uint32_t *)cn_sec(lane, CN_SEC_EXEC))[n - 1] = id;
        return;
    }
    /* the exec entry was already handed to the recorder: say it in an event */
    struct cn_event *ev = cn_event_new(t, CN_EV_PARTIAL, ordinal);
    ev->v[0] = ran;
    ev->v[1] = id;
    cn_event_commit(t);
}

static inline void record_exec(struct cn_thread *t, struct cn_lane_header *lane, uint32_t n,
                               const struct cn_tb *d)
{
    t->exec[n] = d->block_id;
    lane->cur_done = d->n_insns == 1;
    lane->cur_accessed = 0;
    lane->cur_block = d->block_id;
    lane->cur_snap = d->end_counted ? cn_compat_block_ends(d, t->vcpu) : 0;
    cn_count_set(lane, CN_SEC_EXEC, n + 1);
    t->cur = d;
    t->exec_ord++;
    t->cur_before = t->seg_insns;
    t->cur_insns = d->n_insns;
    t->seg_insns += d->n_insns;
}

static inline bool prev_block_cut_short(const struct cn_thread *t)
{
    const struct cn_tb *prev = t->cur;
    return !t->lane->cur_done && prev &&
           (!prev->end_counted || cn_compat_block_ends(prev, t->vcpu) == t->lane->cur_snap);
}

/* Everything but the common case: first event of a thread, a block that was
 * cut short, a segment to close, a full exec section. */
static __attribute__((noinline)) void tb_exec_slow(struct cn_thread *t, const struct cn_tb *d,
                                                  unsigned int vcpu_index)
{
    if (!t->lane) {
        cn_thread_begin(t);
    }
    t->vcpu = vcpu_index;
    if (prev_block_cut_short(t)) {
        resolve_interrupted(t, d->pc, false);
    }
    if (t->exec_ord - t->segment_start >= CN_SEGMENT_BLOCKS) {
        cn_segment_close(t, t->exec_ord);
    }
    if (t->lane->count[CN_SEC_EXEC] == CN_CAP_EXEC) {
        cn_lane_rollover(t, true);
    }
    record_exec(t, t->lane, t->lane->count[CN_SEC_EXEC], d);
}

static inline void exec_block(struct cn_thread *t, const struct cn_tb *d, unsigned int vcpu_index)
{
    struct cn_lane_header *lane = t->lane;
    if (CN_UNLIKELY(!lane || t->vcpu != vcpu_index || prev_block_cut_short(t) ||
                    t->exec_ord - t->segment_start >= CN_SEGMENT_BLOCKS ||
                    lane->count[CN_SEC_EXEC] == CN_CAP_EXEC)) {
        tb_exec_slow(t, d, vcpu_index);
        return;
    }
    record_exec(t, lane, lane->count[CN_SEC_EXEC], d);
}

/* The same, and the registers that changed since the thread's previous block:
 * those it may have written, or all of them where a signal may have entered. */
static inline void exec_block_regs(struct cn_thread *t, const struct cn_tb *d, unsigned int vcpu_index,
                                   const uint64_t *values)
{
    const struct cn_tb *prev = t->cur;
    uint64_t wanted = prev ? prev->reg_writes : ~(uint64_t)0;
    exec_block(t, d, vcpu_index);
    if (CN_UNLIKELY(cn_may_be_signal_entry(d->pc))) {
        wanted = ~(uint64_t)0;
    }
    cn_regs_record(t, wanted, values);
}

/* Runs before every executed block: keep it to a few loads and stores. */
static void vcpu_tb_exec(unsigned int vcpu_index, void *udata)
{
    cn_compat_block_start(vcpu_index);
    exec_block(&cn_self, udata, vcpu_index);
}

static void vcpu_tb_exec_regs(unsigned int vcpu_index, void *udata)
{
    cn_compat_block_start(vcpu_index);
    exec_block_regs(&cn_self, udata, vcpu_index, NULL);
}

void cn_exec_block(struct cn_thread *t, const struct cn_tb *d, const uint64_t *values)
{
    if (cn_cfg.record_regs) {
        exec_block_regs(t, d, t->vcpu, values);
    } else {
        exec_block(t, d, t->vcpu);
    }
}

static void vcpu_insn_last(unsigned int vcpu_index, void *udata)
{
    (void)vcpu_index;
    cn_exec_last_insn(cn_thread_self(), (uint32_t)(uintptr_t)udata);
}

void cn_resolve_at_exit(struct cn_thread *t)
{
    if (!cn_cfg.inline_records) {
        cn_compat_block_start(t->vcpu); /* inline: the end records are in the lane */
    }
    if (t->lane && prev_block_cut_short(t)) {
        resolve_interrupted(t, 0, true);
    }
}

static void learn_guest_base(struct qemu_plugin_insn *insn)
{
    void *haddr = qemu_plugin_insn_haddr(insn);
    if (haddr && !cn_cfg.guest_base_known) {
        /* user mode maps guest address A at host address guest_base + A */
        cn_cfg.guest_base = (uint64_t)(uintptr_t)haddr - qemu_plugin_insn_vaddr(insn);
        cn_cfg.guest_base_known = true;
        cn_cfg.ring->guest_base = cn_cfg.guest_base;
    }
}

static struct cn_tb *describe_block(struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (n > CN_MAX_BLOCK_INSNS) {
        n = CN_MAX_BLOCK_INSNS;
    }
    struct cn_tb *d = xcalloc(1, sizeof(*d));
    d->pc = qemu_plugin_tb_vaddr(tb);
    d->n_insns = (uint16_t)n;
    d->insn_pc = xcalloc(n, sizeof(uint64_t));
    d->insn_size = xcalloc(n, 1);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        total += qemu_plugin_insn_size(qemu_plugin_tb_get_insn(tb, i));
    }
    d->bytes = xcalloc(total, 1);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        d->insn_pc[i] = qemu_plugin_insn_vaddr(insn);
        size_t got = cn_compat_insn_bytes(insn, d->bytes + off, total - off);
        d->insn_size[i] = (uint8_t)got;
        off += got;
    }
    d->n_bytes = (uint16_t)off;
    d->reg_writes = cn_cfg.record_regs ? cn_reg_writes(d) : 0;
    learn_guest_base(qemu_plugin_tb_get_insn(tb, 0));
    return d;
}

/* The program's path, absolute: QEMU gives it as its command line (or the
 * exec call that ran it) named it, maybe relative to the working directory,
 * which is still the one it was named in. */
static size_t program_path(char *out, size_t size)
{
    const char *path = qemu_plugin_path_to_binary ? qemu_plugin_path_to_binary() : NULL;
    char cwd[PATH_MAX];
    if (!path) {
        return 0;
    }
    bool relative = path[0] != '/' && getcwd(cwd, sizeof(cwd)) != NULL;
    int n = snprintf(out, size, "%s%s%s", relative ? cwd : "", relative ? "/" : "", path);
    free((void *)path); /* QEMU's copy */
    return n < 0 ? 0 : (size_t)n < size ? (size_t)n : size - 1;
}

/* Where QEMU's loader put the program, once per process image (a fork child
 * shares its parent's; a followed exec records its own): the indexer places
 * the executable and interpreter with it. */
static void record_process(struct cn_thread *t, uint64_t first_pc)
{
    char path[CN_MAX_BLOB_ITEM];
    size_t len = program_path(path, sizeof(path));
    cn_lane_reserve(t, CN_SEC_BLOB, (uint32_t)len);
    cn_lane_reserve(t, CN_SEC_EVENT, 1);
    struct cn_lane_header *lane = t->lane;
    uint32_t off = lane->count[CN_SEC_BLOB];
    memcpy((uint8_t *)cn_sec(lane, CN_SEC_BLOB) + off, path, len);
    cn_count_set(lane, CN_SEC_BLOB, off + (uint32_t)len);
    struct cn_event *ev = cn_event_new(t, CN_EV_PROCESS, t->exec_ord);
    /* 0 where this QEMU cannot say (qemu_plugin_api.h) */
    ev->v[0] = qemu_plugin_start_code ? qemu_plugin_start_code() : 0;
    ev->v[1] = qemu_plugin_end_code ? qemu_plugin_end_code() : 0;
    ev->v[2] = qemu_plugin_entry_code ? qemu_plugin_entry_code() : 0;
    ev->v[3] = cn_cfg.guest_base;
    ev->v[4] = first_pc;
    ev->v[5] = off;
    ev->v[6] = len;
    cn_event_commit(t);
}

void vcpu_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    if (qemu_plugin_tb_n_insns(tb) == 0) {
        return;
    }
    struct cn_tb *d = describe_block(tb);
    d->block_id = new_block_id();
    struct cn_thread *t = cn_thread_self();
    if (!cn_cfg.process_recorded) {
        cn_cfg.process_recorded = true;
        record_process(t, d->pc);
        cn_layout_logged();
        cn_regs_emit_names(t);
    }
    emit_block_def(t, d, d->block_id, d->n_insns, 0);
    if (cn_cfg.inline_records) {
        /* QEMU writes the records; the block's end is a record too (plugin_inline.c) */
        cn_inline_instrument(tb, d);
        return;
    }

    if (cn_cfg.record_regs) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, vcpu_tb_exec_regs, QEMU_PLUGIN_CB_R_REGS, d);
    } else {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, vcpu_tb_exec, QEMU_PLUGIN_CB_NO_REGS, d);
    }
    size_t last = d->n_insns - 1;
    if (last > 0) {
        cn_compat_count_block_end(tb, d);
    }
    if (last > 0 && !d->end_counted) {
        qemu_plugin_register_vcpu_insn_exec_cb(qemu_plugin_tb_get_insn(tb, last), vcpu_insn_last,
                                               QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)last);
    }
    if (cn_cfg.record_mem) {
        for (size_t i = 0; i < d->n_insns; i++) {
            uintptr_t info = (uintptr_t)i << CN_MEMINFO_INSN_SHIFT;
            qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i), vcpu_mem,
                                             QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW,
                                             (void *)info);
        }
    }
}
