/*
 * plugin_compat.c -- the version-dependent parts of the plugin that keep
 * state: the block-end counters (plugin_exec.c explains what they are for).
 *
 * API 1: one counter per block id in the ring, bumped by an inline add on the
 * block's last instruction.  The add is shared by all threads (QEMU 7.2 - 8.2
 * have no per-vCPU inline ops), so threads running the same block at once can
 * lose updates; the recorder can read the counters after QEMU died.
 * API >= 2: one counter per vCPU in a QEMU scoreboard, bumped by a per-vCPU
 * inline add.  Exact, and no callback either; but it lives in QEMU's memory,
 * so a recorder salvaging the lanes of a killed QEMU cannot read it (the
 * plugin says so by setting the ring's hits_capacity to 0).
 */
#include "plugin.h"

#if CN_QEMU_PLUGIN_API == 1

const bool cn_compat_exact_block_ends = false;

void cn_compat_init(void)
{
}

void cn_compat_count_block_end(struct qemu_plugin_tb *tb, struct cn_tb *d)
{
    struct cn_ring_header *r = cn_cfg.ring;
    if (d->block_id >= r->hits_capacity) {
        return; /* out of counters: plugin_exec.c marks the end with a callback */
    }
    d->hits = &cn_ring_hits(r)[d->block_id];
    d->end_counted = true;
    qemu_plugin_register_vcpu_insn_exec_inline(qemu_plugin_tb_get_insn(tb, d->n_insns - 1u),
                                               QEMU_PLUGIN_INLINE_ADD_U64, d->hits, 1);
}

void cn_compat_block_start(unsigned int vcpu_index)
{
    (void)vcpu_index;
}

uint64_t cn_compat_block_ends(const struct cn_tb *d, unsigned int vcpu_index)
{
    (void)vcpu_index;
    return __atomic_load_n(d->hits, __ATOMIC_RELAXED);
}

#else

const bool cn_compat_exact_block_ends = true;

static qemu_plugin_u64 block_ends; /* per vCPU: last instructions of blocks run */
/* the calling thread's counter when its current block started: one read of
 * the scoreboard (a call into QEMU) per block serves both the check of the
 * previous block and the snapshot of the new one */
static __thread uint64_t ends_at_start __attribute__((tls_model("initial-exec")));

void cn_compat_init(void)
{
    block_ends = (qemu_plugin_u64){ qemu_plugin_scoreboard_new(sizeof(uint64_t)), 0 };
    cn_cfg.ring->hits_capacity = 0;
}

void cn_compat_count_block_end(struct qemu_plugin_tb *tb, struct cn_tb *d)
{
    d->end_counted = true;
    qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(qemu_plugin_tb_get_insn(tb, d->n_insns - 1u),
                                                        QEMU_PLUGIN_INLINE_ADD_U64, block_ends, 1);
}

void cn_compat_block_start(unsigned int vcpu_index)
{
    ends_at_start = qemu_plugin_u64_get(block_ends, vcpu_index);
}

uint64_t cn_compat_block_ends(const struct cn_tb *d, unsigned int vcpu_index)
{
    (void)d, (void)vcpu_index;
    return ends_at_start;
}

#endif
