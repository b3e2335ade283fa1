/*
 * plugin_mem.c -- every guest memory access with its value.
 *
 * QEMU calls vcpu_mem after the access.  With plugin API < 4 the value is read
 * back from guest memory: for a load it is what was loaded, for a store what was stored (the
 * old contents are gone; an earlier record of the address has them).  In user
 * mode guest address A lives at host address guest_base + A (learnt from the
 * first translated instruction: host address minus guest address).  Another
 * guest thread may store to the same address between the access and the read
 * back; see docs/format.md.
 *
 * Plugin API >= 4 hands over the value itself (qemu_plugin_mem_get_value),
 * so no read-back race; a 16-byte (vector) access, which only QEMU >= 9 makes,
 * is recorded as two 8-byte accesses at A and A + 8 of the same instruction.
 *
 * Per access: 8 bytes address, 8 bytes value, 4 bytes info; the pc is implied
 * by the block and the instruction index carried in the info word.  Where
 * QEMU writes the records itself (plugin_inline.c) this callback is not
 * registered; both end in cn_put_access (plugin.h).
 */
#include <string.h>

#include "plugin.h"

void vcpu_mem(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata)
{
    struct cn_thread *t = cn_thread_self();
    (void)vcpu_index;
    unsigned size_shift = qemu_plugin_mem_size_shift(info);
    unsigned shift = size_shift > 3 ? 3 : size_shift; /* 16 bytes: two 8-byte halves */
    uint64_t value[2];
    unsigned halves = cn_compat_mem_value(info, cn_cfg.guest_base + vaddr, size_shift, value);
    uint32_t word = (uint32_t)(uintptr_t)udata | shift | (qemu_plugin_mem_is_store(info) ? CN_MEMINFO_STORE : 0);
    cn_put_access(t, vaddr, value[0], word);
    if (halves == 2) {
        cn_put_access(t, vaddr + 8, value[1], word);
    }
    t->lane->cur_accessed = ((uint32_t)(uintptr_t)udata >> CN_MEMINFO_INSN_SHIFT) + 1u;
}
