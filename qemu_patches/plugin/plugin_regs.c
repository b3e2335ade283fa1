/*
 * plugin_regs.c -- general-purpose registers and flags at block entry.
 *
 * Plugin API >= 2 only (QEMU >= 9.0): QEMU 7.2 - 8.2 give plugins no register
 * access, and the ring's regs_state tells the recorder why nothing is here.
 *
 * The first vCPU's init (vcpu_init, in vCPU context as QEMU requires) picks
 * the registers by name for the target: the integer registers, the stack
 * pointer, and the flags where QEMU can read them live (not x86, see below).
 * The pc is not read: at block entry it is the block's pc, which exec
 * already has.  At every executed block (the exec callback asks QEMU for
 * register access) cn_regs_record reads the registers the thread's previous
 * block may have written (plugin_reg_writes.c), or all of them after what no
 * instruction of it explains -- the thread's first block, a syscall, a
 * possible signal handler entry, a block cut short -- and at every ordering
 * segment; it writes those whose value differs from the thread's previous
 * block entry, and where it read everything anyway (first block, after a
 * segment) every register as a keyframe, so a reader finds each value at most
 * one segment back.  regs=check reads all of them every time and counts
 * changes the masks missed (the ring's regs_missed; the tests expect 0).
 *
 * Where QEMU writes records from its generated code (plugin_inline.c), it
 * copies every recorded register into the record of each block's entry, and
 * cn_regs_record takes the values from there instead of reading them: the
 * same selection and the same records, without a call per register.
 *
 * Record: 8 bytes value (the register's bytes in target order, read as a
 * little-endian integer: all supported targets are little-endian) and 4 bytes
 * info (number | link << 8, cannoli_format.h).  Names go out once, as
 * CN_EV_REG_NAME events, with the first translated block.
 */
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

#if CN_QEMU_PLUGIN_API >= 2

/* gdb register names, per QEMU target, in the order they are numbered.
 * x86's eflags only with x86_flags=on: TCG keeps x86 flags lazily (cc_op,
 * cc_src, ...) and folds them into eflags only when it leaves the CPU loop, so
 * a stock QEMU hands a plugin stale flags; qemu_patches/0002 makes QEMU
 * compute them, and the recorder turns the option on for such a QEMU.  The
 * other targets' flag registers (cpsr) are computed from live state when read. */
static const char *const x86_64_regs[] = {
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
    "r11", "r12", "r13", "r14", "r15", "fs_base", NULL,
};
static const char *const i386_regs[] = {
    "eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", NULL,
};
static const char *const aarch64_regs[] = {
    "x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11",
    "x12", "x13", "x14", "x15", "x16", "x17", "x18", "x19", "x20", "x21", "x22",
    "x23", "x24", "x25", "x26", "x27", "x28", "x29", "x30", "sp", "cpsr", NULL,
};
static const char *const arm_regs[] = {
    "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11",
    "r12", "sp", "lr", "cpsr", NULL,
};
static const char *const riscv_regs[] = {
    "ra", "sp", "gp", "tp", "t0", "t1", "t2", "fp", "s1", "a0", "a1", "a2", "a3",
    "a4", "a5", "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9",
    "s10", "s11", "t3", "t4", "t5", "t6", NULL,
};
static const char *const mips_regs[] = {
    "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12",
    "r13", "r14", "r15", "r16", "r17", "r18", "r19", "r20", "r21", "r22", "r23",
    "r24", "r25", "r26", "r27", "r28", "r29", "r30", "r31", "lo", "hi", NULL,
};

static const struct {
    const char *target;
    const char *const *names;
} wanted_by_target[] = {
    { "x86_64", x86_64_regs }, { "i386", i386_regs }, { "aarch64", aarch64_regs },
    { "arm", arm_regs }, { "riscv64", riscv_regs }, { "riscv32", riscv_regs },
    { "mips", mips_regs }, { "mipsel", mips_regs }, { "mips64", mips_regs },
    { "mips64el", mips_regs },
};

static struct qemu_plugin_register *handles[CN_MAX_REGS];
static const char *names[CN_MAX_REGS];
static unsigned int n_regs;
static bool selected;

static const char *const *wanted_names(const char *target)
{
    for (size_t i = 0; i < sizeof(wanted_by_target) / sizeof(wanted_by_target[0]); i++) {
        if (strcmp(wanted_by_target[i].target, target) == 0) {
            return wanted_by_target[i].names;
        }
    }
    return NULL;
}

/* Record the register QEMU lists under this name, if it lists one. */
static void add_register(const GArray *all, const char *name)
{
    const qemu_plugin_reg_descriptor *desc = (const qemu_plugin_reg_descriptor *)all->data;
    for (unsigned int i = 0; i < all->len; i++) {
        if (strcmp(desc[i].name, name) == 0) {
            handles[n_regs] = desc[i].handle;
            names[n_regs] = desc[i].name; /* QEMU's string: lives as long as QEMU */
            n_regs++;
            return;
        }
    }
}

/* vcpu_init of the first vCPU: QEMU's register list exists only in vCPU context. */
void cn_regs_select(qemu_plugin_id_t id, unsigned int vcpu_index)
{
    (void)id, (void)vcpu_index;
    if (selected || !cn_cfg.record_regs) {
        return;
    }
    selected = true;
    GArray *all = qemu_plugin_get_registers();
    const char *const *want = wanted_names(cn_cfg.target);
    for (size_t w = 0; want && want[w] && n_regs < CN_MAX_REGS - 1u; w++) {
        add_register(all, want[w]);
    }
    if (cn_cfg.x86_flags && n_regs < CN_MAX_REGS - 1u) {
        add_register(all, "eflags");
    }
    g_array_free(all, 1);
    cn_inline_regs_select(names, n_regs);
    cn_reg_writes_init(names, n_regs);
    cn_cfg.ring->regs_recorded = n_regs;
    cn_cfg.ring->regs_state = n_regs ? CN_REGS_RECORDED : CN_REGS_NONE_KNOWN;
    cn_cfg.record_regs = n_regs > 0;
}

void cn_regs_emit_names(struct cn_thread *t)
{
    for (unsigned int r = 0; r < n_regs; r++) {
        uint32_t len = (uint32_t)strnlen(names[r], 64);
        cn_lane_reserve(t, CN_SEC_BLOB, len);
        cn_lane_reserve(t, CN_SEC_EVENT, 1);
        struct cn_lane_header *lane = t->lane;
        uint32_t off = lane->count[CN_SEC_BLOB];
        memcpy((uint8_t *)cn_sec(lane, CN_SEC_BLOB) + off, names[r], len);
        cn_count_set(lane, CN_SEC_BLOB, off + len);
        struct cn_event *ev = cn_event_new(t, CN_EV_REG_NAME, t->exec_ord);
        ev->v[0] = r;
        ev->v[1] = off;
        ev->v[2] = len;
        ev->v[3] = 0;
        cn_event_commit(t);
    }
}

static bool thread_regs_ready(struct cn_thread *t)
{
    if (CN_LIKELY(t->regs != NULL)) {
        return true;
    }
    t->regs = calloc(CN_MAX_REGS, sizeof(uint64_t));
    t->reg_buf = g_byte_array_new();
    return t->regs != NULL && t->reg_buf != NULL;
}

/* The thread has ended: its register state goes with it. */
void cn_regs_forget(struct cn_thread *t)
{
    free(t->regs);
    t->regs = NULL;
    if (t->reg_buf) {
        g_byte_array_free(t->reg_buf, 1);
        t->reg_buf = NULL;
    }
}

/* Read register r (QEMU appends its bytes to buf) as a little-endian integer. */
static inline uint64_t read_register(GByteArray *buf, unsigned int r)
{
    g_byte_array_set_size(buf, 0);
    int got = qemu_plugin_read_register(handles[r], buf);
    uint64_t v = 0;
    memcpy(&v, buf->data, got <= 0 ? 0 : got < 8 ? (size_t)got : 8);
    return v;
}

unsigned int cn_regs_count(void)
{
    return n_regs;
}

void cn_regs_record(struct cn_thread *t, uint64_t wanted, const uint64_t *values_now)
{
    if (CN_UNLIKELY(!thread_regs_ready(t))) {
        return;
    }
    /* the last slot is never a register's: 0 until the thread's first block */
    bool first = t->regs[CN_MAX_REGS - 1] == 0;
    /* a resync (first block, after a segment) writes a keyframe: every register */
    bool keyframe = first || t->regs_resync;
    uint64_t predicted = wanted;
    if (keyframe || cn_cfg.regs_check) {
        wanted = ~(uint64_t)0;
        t->regs_resync = false;
    }
    wanted &= ((uint64_t)1 << n_regs) - 1u; /* n_regs < 64 */
    struct cn_lane_header *lane = t->lane;
    if (lane->count[CN_SEC_REG_INFO] + n_regs > CN_CAP_REG) {
        cn_lane_rollover(t, false);
        lane = t->lane;
    }
    uint64_t *values = cn_sec(lane, CN_SEC_REG_VALUE);
    uint32_t *info = cn_sec(lane, CN_SEC_REG_INFO);
    uint32_t n = lane->count[CN_SEC_REG_INFO];
    uint32_t link = lane->count[CN_SEC_EXEC] << CN_REGINFO_LINK_SHIFT;
    uint32_t frame = keyframe ? CN_REGINFO_KEYFRAME : 0;
    for (uint64_t todo = wanted; todo; todo &= todo - 1u) {
        unsigned int r = (unsigned int)__builtin_ctzll(todo);
        uint64_t v = values_now ? values_now[r] : read_register(t->reg_buf, r);
        bool changed = v != t->regs[r] || first;
        if (!changed && !keyframe) {
            continue;
        }
        if (changed && !keyframe && !((predicted >> r) & 1)) {
            __atomic_add_fetch(&cn_cfg.ring->regs_missed, 1, __ATOMIC_RELAXED);
        }
        t->regs[r] = v;
        values[n] = v;
        info[n] = r | link | frame | (changed ? CN_REGINFO_CHANGED : 0);
        n++;
    }
    t->regs[CN_MAX_REGS - 1] = 1;
    /* REG_INFO's count covers both register sections (ring_consumer.c) */
    cn_count_set(lane, CN_SEC_REG_INFO, n);
}

/* A packet that continues the current block starts with its registers at that
 * block's entry (t->regs holds them), so that the block, which may begin an
 * ordering segment, has a keyframe like every segment's first block. */
void cn_regs_keyframe(struct cn_thread *t)
{
    if (!cn_cfg.record_regs || !t->regs || t->regs[CN_MAX_REGS - 1] == 0) {
        return;
    }
    struct cn_lane_header *lane = t->lane;
    uint64_t *values = cn_sec(lane, CN_SEC_REG_VALUE);
    uint32_t *info = cn_sec(lane, CN_SEC_REG_INFO);
    uint32_t n = lane->count[CN_SEC_REG_INFO];
    uint32_t link = lane->count[CN_SEC_EXEC] << CN_REGINFO_LINK_SHIFT;
    for (unsigned int r = 0; r < n_regs && n < CN_CAP_REG; r++, n++) {
        values[n] = t->regs[r];
        info[n] = r | link | CN_REGINFO_KEYFRAME;
    }
    cn_count_set(lane, CN_SEC_REG_INFO, n);
}

#else

void cn_regs_keyframe(struct cn_thread *t)
{
    (void)t;
}

void cn_regs_select(qemu_plugin_id_t id, unsigned int vcpu_index)
{
    (void)id, (void)vcpu_index;
}

void cn_regs_emit_names(struct cn_thread *t)
{
    (void)t;
}

unsigned int cn_regs_count(void)
{
    return 0;
}

void cn_regs_record(struct cn_thread *t, uint64_t wanted, const uint64_t *values_now)
{
    (void)t, (void)wanted, (void)values_now;
}

void cn_regs_forget(struct cn_thread *t)
{
    (void)t;
}

#endif
