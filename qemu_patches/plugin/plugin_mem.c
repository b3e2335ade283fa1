/*
 * plugin_mem.c -- every guest memory access with its value.
 *
 * QEMU calls vcpu_mem after the access, so the value is read back from guest
 * memory: for a load it is what was loaded, for a store what was stored (the
 * old contents are gone; an earlier record of the address has them).  In user
 * mode guest address A lives at host address guest_base + A (learnt from the
 * first translated instruction: host address minus guest address).  Another
 * guest thread may store to the same address between the access and the read
 * back; see docs/format.md.
 *
 * Per access: 8 bytes address, 8 bytes value, 4 bytes info; the pc is implied
 * by the block and the instruction index carried in the info word.
 */
#include <string.h>

#include "plugin.h"

static inline uint64_t read_guest(uint64_t vaddr, unsigned shift)
{
    const void *host = (const void *)(uintptr_t)(cn_cfg.guest_base + vaddr);
    switch (shift) {
    case 0: { uint8_t v; memcpy(&v, host, 1); return v; }
    case 1: { uint16_t v; memcpy(&v, host, 2); return v; }
    case 2: { uint32_t v; memcpy(&v, host, 4); return v; }
    default: { uint64_t v; memcpy(&v, host, 8); return v; }
    }
}

void vcpu_mem(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata)
{
    struct cn_thread *t = cn_thread_self();
    (void)vcpu_index;
    struct cn_lane_header *lane = t->lane;
    uint32_t n = lane->count[CN_SEC_MEM_ADDR];
    if (CN_UNLIKELY(n == CN_CAP_MEM)) {
        cn_lane_rollover(t);
        lane = t->lane;
        n = 0;
    }
    unsigned shift = qemu_plugin_mem_size_shift(info);
    if (shift > 3) {
        shift = 3; /* API 1 reports at most 8-byte accesses; never read past them */
    }
    uint32_t word = (uint32_t)(uintptr_t)udata | shift |
                    (qemu_plugin_mem_is_store(info) ? CN_MEMINFO_STORE : 0) |
                    (lane->count[CN_SEC_EXEC] << CN_MEMINFO_LINK_SHIFT);
    t->mem_addr[n] = vaddr;
    t->mem_value[n] = read_guest(vaddr, shift);
    t->mem_info[n] = word;
    lane->cur_progress = ((uint32_t)(uintptr_t)udata >> CN_MEMINFO_INSN_SHIFT) + 1u;
    /* the three mem sections share one count: MEM_ADDR's */
    cn_count_set(lane, CN_SEC_MEM_ADDR, n + 1);
}
