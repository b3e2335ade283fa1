/*
 * fault_point.c -- where in a block a signal stopped it.
 *
 * When a signal stops a block early, the instructions that ran are the ones
 * before the faulting instruction, and the faulting one itself (it started).
 * The memory callbacks say which instruction last completed an access; the
 * faulting one is the first instruction after it that can fault at all: one
 * that touches memory (an operand, or implicitly: push, call, string ops) or
 * traps by itself (divide, ud2, int3, privileged instructions).  Decided once
 * with capstone, only when it is needed (signals are rare).
 *
 * One implementation for both sides: the plugin calls it when a thread enters
 * a signal handler from inside a block; the recorder's consumer library
 * exports it to Python for a thread that died inside a block (QEMU 7.2 runs no
 * plugin callback on a fatal signal), used by stream_stats.py and positions.py.
 *
 * Only x86_64 is classified today; for other targets the answer falls back to
 * "up to the last instruction known to have started".
 */
#include <capstone/capstone.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fault_point.h"

static __thread csh handle;
static __thread int handle_state; /* 0 not tried, 1 open, -1 unavailable */

/* Mnemonics (the last word, after any rep/lock prefix) that fault without an
 * explicit memory operand. */
static const char *const implicit[] = {
    "push", "pushf", "pushfq", "pushfd", "pushal", "pushaw", "pop", "popf", "popfq", "popfd", "popal",
    "popaw", "leave", "enter", "movsb", "movsw", "movsd", "movsq", "stosb", "stosw", "stosd", "stosq",
    "lodsb", "lodsw", "lodsd", "lodsq", "cmpsb", "cmpsw", "cmpsd", "cmpsq", "scasb", "scasw", "scasd",
    "scasq", "insb", "insw", "insd", "outsb", "outsw", "outsd", "xlatb", "div", "idiv", "ud0", "ud1",
    "ud2", "ud2b", "hlt", "into", "bound", "in", "out", "cli", "sti",
};

static bool x86_open(void)
{
    if (handle_state == 0) {
        handle_state = cs_open(CS_ARCH_X86, CS_MODE_64, &handle) == CS_ERR_OK &&
                               cs_option(handle, CS_OPT_DETAIL, CS_OPT_ON) == CS_ERR_OK ? 1 : -1;
    }
    return handle_state == 1;
}

static bool implicit_fault(const char *mnemonic)
{
    const char *word = strrchr(mnemonic, ' ');
    word = word ? word + 1 : mnemonic;
    for (size_t i = 0; i < sizeof(implicit) / sizeof(implicit[0]); i++) {
        if (strcmp(word, implicit[i]) == 0) {
            return true;
        }
    }
    return false;
}

static bool x86_may_fault(const cs_insn *insn)
{
    static const uint8_t groups[] = { CS_GRP_INT, CS_GRP_PRIVILEGE, CS_GRP_CALL, CS_GRP_RET, CS_GRP_IRET };
    for (size_t i = 0; i < sizeof(groups); i++) {
        if (cs_insn_group(handle, insn, groups[i])) {
            return true;
        }
    }
    if (implicit_fault(insn->mnemonic)) {
        return true;
    }
    if (insn->id == X86_INS_LEA || insn->id == X86_INS_NOP || strncmp(insn->mnemonic, "prefetch", 8) == 0) {
        return false; /* a memory operand that is never accessed */
    }
    const cs_x86 *x86 = &insn->detail->x86;
    for (uint8_t i = 0; i < x86->op_count; i++) {
        if (x86->operands[i].type == X86_OP_MEM) {
            return true;
        }
    }
    return false;
}

static bool insn_may_fault(const uint8_t *code, size_t size, uint64_t pc)
{
    cs_insn *insn = NULL;
    size_t got = cs_disasm(handle, code, size, pc, 1, &insn);
    /* an instruction capstone cannot read may do anything */
    bool may = got != 1 || x86_may_fault(insn);
    if (got) {
        cs_free(insn, got);
    }
    return may;
}

uint32_t cn_fault_point(const char *target, uint64_t pc, const uint8_t *code, const uint8_t *sizes,
                        uint32_t n, uint32_t accessed)
{
    if (n == 0) {
        return 0;
    }
    if (strcmp(target, "x86_64") == 0 && x86_open()) {
        size_t offset = 0;
        for (uint32_t i = 0; i < n; offset += sizes[i], i++) {
            if (i >= accessed && insn_may_fault(code + offset, sizes[i], pc + offset)) {
                return i + 1;
            }
        }
    }
    return accessed == 0 ? 1 : (accessed < n ? accessed : n);
}
