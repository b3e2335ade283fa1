/*
 * plugin_reg_writes.c -- which recorded registers a block may write.
 *
 * Reading a register through the plugin API costs ~16 ns, so reading every
 * recorded register at every block entry would cost more than the rest of the
 * recording together.  Instead, at translation time (once per block) capstone
 * lists the registers each instruction writes, explicitly or implicitly
 * (cs_regs_access: push/pop/call write rsp, div writes rax and rdx, rep movs
 * writes rcx/rsi/rdi, ...), and a block's mask is their union, mapped onto the
 * recorded registers (al/ax/eax/rax -> rax, w3/x3 -> x3, nzcv -> cpsr).  At the
 * next block entry only those registers are read (plugin_regs.c).
 *
 * Where capstone cannot help, every register counts as written: targets
 * without a name mapping here (arm, riscv, mips), an instruction capstone
 * cannot decode.  Changes that no instruction of the block makes -- a syscall,
 * a signal, a fault -- make plugin_regs.c read everything; so does every
 * ordering segment (1,024 blocks), which bounds the reach of any capstone
 * omission, and `regs=check` measures that there is none.
 */
#include <capstone/capstone.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

#if CN_QEMU_PLUGIN_API >= 2

static csh handle;
static bool usable;
static int16_t *recorded_of; /* capstone register id -> register number, or -1 */
static unsigned n_ids;
/* The flags register (aarch64 cpsr, x86 eflags) is read at every block: it
 * changes at almost every block anyway, QEMU's cpsr holds more than NZCV
 * (BTYPE among others), and capstone 4 misses flag writes of some instructions
 * (regs=check counted them) */
static int flags_reg = -1;

/* x86 sub-registers whose names do not contain the full register's */
static const char *const x86_alias[][2] = {
    { "al", "rax" }, { "ah", "rax" }, { "ax", "rax" }, { "eax", "rax" },
    { "bl", "rbx" }, { "bh", "rbx" }, { "bx", "rbx" }, { "ebx", "rbx" },
    { "cl", "rcx" }, { "ch", "rcx" }, { "cx", "rcx" }, { "ecx", "rcx" },
    { "dl", "rdx" }, { "dh", "rdx" }, { "dx", "rdx" }, { "edx", "rdx" },
    { "sil", "rsi" }, { "si", "rsi" }, { "esi", "rsi" }, { "dil", "rdi" }, { "di", "rdi" },
    { "edi", "rdi" }, { "bpl", "rbp" }, { "bp", "rbp" }, { "ebp", "rbp" }, { "spl", "rsp" },
    { "sp", "rsp" }, { "esp", "rsp" },
};

/* The recorded register a capstone register name is part of, as a name. */
static void canonical(bool x86, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s", name);
    if (x86) {
        for (size_t i = 0; i < sizeof(x86_alias) / sizeof(x86_alias[0]); i++) {
            if (strcmp(name, x86_alias[i][0]) == 0) {
                snprintf(out, cap, "%s", x86_alias[i][1]);
                return;
            }
        }
        size_t len = strlen(out); /* r8b, r8w, r8d -> r8 */
        if (len > 2 && out[0] == 'r' && out[1] >= '0' && out[1] <= '9' && strchr("bwd", out[len - 1])) {
            out[len - 1] = '\0';
        }
        return;
    }
    if (strcmp(name, "wsp") == 0) {
        snprintf(out, cap, "sp");
    } else if (strcmp(name, "nzcv") == 0) {
        snprintf(out, cap, "cpsr");
    } else if (name[0] == 'w' && name[1] >= '0' && name[1] <= '9') {
        snprintf(out, cap, "x%s", name + 1);
    }
}

void cn_reg_writes_init(const char *const *names, unsigned n)
{
    bool x86 = strcmp(cn_cfg.target, "x86_64") == 0;
    bool a64 = strcmp(cn_cfg.target, "aarch64") == 0;
    if (!(x86 || a64) ||
        cs_open(x86 ? CS_ARCH_X86 : CS_ARCH_ARM64, x86 ? CS_MODE_64 : CS_MODE_ARM, &handle) != CS_ERR_OK) {
        return;
    }
    cs_option(handle, CS_OPT_DETAIL, CS_OPT_ON);
    n_ids = x86 ? X86_REG_ENDING : ARM64_REG_ENDING;
    recorded_of = malloc(n_ids * sizeof(*recorded_of));
    if (!recorded_of) {
        return;
    }
    for (unsigned id = 0; id < n_ids; id++) {
        recorded_of[id] = -1;
        const char *name = id ? cs_reg_name(handle, id) : NULL;
        char canon[32];
        if (!name) {
            continue;
        }
        canonical(x86, name, canon, sizeof(canon));
        for (unsigned r = 0; r < n; r++) {
            if (strcmp(canon, names[r]) == 0) {
                recorded_of[id] = (int16_t)r;
            }
        }
    }
    for (unsigned r = 0; r < n; r++) {
        if (strcmp(names[r], "cpsr") == 0 || strcmp(names[r], "eflags") == 0) {
            flags_reg = (int)r;
        }
    }
    usable = true;
}

/* The recorded registers the block's instructions may write (bit r: register r). */
uint64_t cn_reg_writes(const struct cn_tb *d)
{
    if (!usable) {
        return ~(uint64_t)0;
    }
    uint64_t mask = 0;
    size_t off = 0;
    cs_insn *insn = cs_malloc(handle);
    for (uint16_t i = 0; insn && i < d->n_insns; i++) {
        const uint8_t *code = d->bytes + off;
        size_t size = d->insn_size[i];
        uint64_t pc = d->insn_pc[i];
        cs_regs read, written;
        uint8_t n_read, n_written;
        if (!cs_disasm_iter(handle, &code, &size, &pc, insn) ||
            cs_regs_access(handle, insn, read, &n_read, written, &n_written) != CS_ERR_OK) {
            mask = ~(uint64_t)0;
            break;
        }
        for (uint8_t w = 0; w < n_written; w++) {
            if (written[w] < n_ids && recorded_of[written[w]] >= 0) {
                mask |= (uint64_t)1 << recorded_of[written[w]];
            }
        }
        if (strcmp(insn->mnemonic, "wrfsbase") == 0 || strcmp(insn->mnemonic, "wrgsbase") == 0) {
            mask = ~(uint64_t)0; /* writes fs_base, which capstone does not name */
        }
        off += d->insn_size[i];
    }
    if (insn) {
        cs_free(insn, 1);
    } else {
        mask = ~(uint64_t)0;
    }
    return flags_reg >= 0 ? mask | (uint64_t)1 << flags_reg : mask;
}

#else

void cn_reg_writes_init(const char *const *names, unsigned int n)
{
    (void)names, (void)n;
}

uint64_t cn_reg_writes(const struct cn_tb *d)
{
    (void)d;
    return 0;
}

#endif
