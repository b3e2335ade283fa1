/*
 * call_stack.c -- call and return reconstruction from the executed-block stream.
 *
 * Python (cannoli_db/calls.py) classifies each block's last instruction once
 * with capstone (call, return, direct or indirect jump) and hands the facts
 * here as arrays indexed by block id.  This file walks each thread's blocks in
 * position order with one stack per thread:
 *
 * - a block that ran to its end and ends in a call pushes a frame (unless a
 *   conditional call fell through to its return address);
 * - a return pops the innermost frame, above the innermost signal frame, whose
 *   return address is where execution went next; frames above it are unwound
 *   with it (a C++-style unwind or a return that skipped frames).  A return
 *   that matches no frame is ignored (a signal handler returning into its
 *   restorer, a `push; ret` jump);
 * - a return or indirect jump to the return address of an earlier call made by
 *   a frame still on the stack, but not the innermost, unwinds to that frame:
 *   longjmp (and siglongjmp out of a handler) lands right after its setjmp;
 * - a block followed by a pc that it cannot reach (not its fall-through, its
 *   direct target, or its last instruction again) was interrupted by a signal:
 *   a signal frame is pushed, and the thread's next rt_sigreturn pops it and
 *   everything above it.
 *
 * Each frame becomes one output row when it leaves the stack, or at the end of
 * its thread (then its end is the thread's last position).  The walk is one pass with O(1) work per block execution (a
 * hash lookup per call and per indirect jump), so it keeps up with the trace.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

/* block kinds, as calls.py classifies them (keep in step with calls.py) */
enum { K_NONE = 0, K_CALL = 1, K_RET = 2, K_JUMP = 3, K_INDIRECT = 4, K_UNKNOWN = 5 };
/* frame kinds, as stored in calls.kind */
enum { F_CALL = 0, F_SIGNAL = 1 };
/* bits of cn_call_row.nulls */
enum { N_RET = 1, N_PARENT = 4, N_SP = 8, N_CALLEE = 16, N_INSNS = 32 };

#define NONE UINT64_MAX
#define MAX_DEPTH (1u << 20)      /* frames per thread; deeper calls are counted, not kept */
#define MAX_MATCH_SCAN (1u << 16) /* frames a return searches for its return address */

typedef struct {
    uint64_t call_idx, ret_idx, end_idx, caller_pc, callee_pc, parent, sp, insns;
    uint32_t tid, depth;
    uint8_t kind, nulls, pad[6];
} cn_call_row;

typedef struct {
    uint64_t call_idx, caller_pc, callee_pc, ret_addr, sp, ran_before;
    uint8_t kind, sp_known, callee_known;
} frame;

typedef struct {
    uint64_t ret_addr;  /* 0: empty slot */
    uint64_t caller;    /* call_idx of the frame that made the call (NONE: the thread's root) */
    uint32_t depth;     /* stack depth when it made the call */
} site;

typedef struct {
    const uint8_t *kind, *site_back;
    const uint16_t *n_insns;
    const uint64_t *site_pc, *ret_addr, *target, *end_pc;
    const int64_t *insn_first;
    const uint64_t *insn_pc;
    uint32_t n_blocks;
    uint64_t n_insn_pc;
    cn_call_row *rows;
    uint64_t n_rows, cap_rows;
    int oom;
} cn_calls;

typedef struct {
    uint32_t tid;
    frame *stack;
    uint32_t depth, cap;
    int have_prev;
    uint64_t prev_idx;
    uint32_t prev_block;
    uint16_t prev_icount;
    uint64_t ran;  /* instructions the thread ran before prev */
    uint64_t sp;
    int sp_known;
    uint64_t *sigret;
    uint64_t n_sigret, next_sigret;
    site *sites;
    uint64_t n_sites, cap_sites;
    uint64_t dropped;
} cn_calls_thread;

EXPORT cn_calls *cn_calls_new(uint32_t n_blocks, const uint8_t *kind, const uint8_t *site_back, const uint16_t *n_insns,
                              const uint64_t *site_pc, const uint64_t *ret_addr, const uint64_t *target,
                              const uint64_t *end_pc, const int64_t *insn_first, const uint64_t *insn_pc,
                              uint64_t n_insn_pc)
{
    cn_calls *w = calloc(1, sizeof *w);
    if (!w) {
        return NULL;
    }
    w->kind = kind;
    w->site_back = site_back;
    w->n_insns = n_insns;
    w->site_pc = site_pc;
    w->ret_addr = ret_addr;
    w->target = target;
    w->end_pc = end_pc;
    w->insn_first = insn_first;
    w->insn_pc = insn_pc;
    w->n_blocks = n_blocks;
    w->n_insn_pc = n_insn_pc;
    return w;
}

EXPORT void cn_calls_free(cn_calls *w)
{
    if (w) {
        free(w->rows);
        free(w);
    }
}

EXPORT cn_calls_thread *cn_calls_thread_new(uint32_t tid, const uint64_t *sigreturns, uint64_t n)
{
    cn_calls_thread *t = calloc(1, sizeof *t);
    if (!t) {
        return NULL;
    }
    t->tid = tid;
    if (n) {
        t->sigret = malloc(n * sizeof *t->sigret);
        if (!t->sigret) {
            free(t);
            return NULL;
        }
        memcpy(t->sigret, sigreturns, n * sizeof *t->sigret);
        t->n_sigret = n;
    }
    return t;
}

EXPORT uint64_t cn_calls_thread_dropped(const cn_calls_thread *t) { return t->dropped; }

/* pc of instruction n of block b (NONE if the block has no such instruction) */
static uint64_t insn_pc(const cn_calls *w, uint32_t b, uint32_t n)
{
    if (n >= w->n_insns[b]) {
        return NONE;
    }
    uint64_t at = (uint64_t)w->insn_first[b] + n;
    return at < w->n_insn_pc ? w->insn_pc[at] : NONE;
}

/* A frame leaves the stack: its last position inside is `end`; `returned`: by its own return;
 * `open`: it was still on the stack when the thread's recording ended. */
static void emit(cn_calls *w, cn_calls_thread *t, uint32_t depth, uint64_t end, int returned, int open)
{
    if (w->n_rows == w->cap_rows) {
        uint64_t cap = w->cap_rows ? 2 * w->cap_rows : 4096;
        cn_call_row *rows = realloc(w->rows, cap * sizeof *rows);
        if (!rows) {
            w->oom = 1;
            return;
        }
        w->rows = rows;
        w->cap_rows = cap;
    }
    const frame *f = &t->stack[depth];
    cn_call_row *r = &w->rows[w->n_rows++];
    memset(r, 0, sizeof *r);
    r->tid = t->tid;
    r->depth = depth;
    r->kind = f->kind;
    r->call_idx = f->call_idx;
    r->caller_pc = f->caller_pc;
    r->callee_pc = f->callee_pc;
    r->sp = f->sp;
    r->parent = depth ? t->stack[depth - 1].call_idx : 0;
    r->ret_idx = returned ? end : 0;
    r->end_idx = end;
    r->insns = 0;
    r->nulls = (returned ? 0 : N_RET) | (depth ? 0 : N_PARENT) | (f->sp_known ? 0 : N_SP) |
               (f->callee_known ? 0 : N_CALLEE) | (open ? N_INSNS : 0);
}

/* instructions the thread ran up to and including position `at`, inside its current block */
static uint64_t ran_through(const cn_calls_thread *t, uint64_t at) { return t->ran + (at - t->prev_idx) + 1; }

/* pop frames down to (and including) depth d; the one at d returned at `end` if `returned` */
static void pop_to(cn_calls *w, cn_calls_thread *t, uint32_t d, uint64_t end, int returned)
{
    uint64_t ran = ran_through(t, end);
    while (t->depth > d) {
        uint32_t top = t->depth - 1;
        uint64_t first_row = w->n_rows;
        emit(w, t, top, end, returned && top == d, 0);
        if (w->n_rows > first_row) {
            w->rows[first_row].insns = ran - t->stack[top].ran_before;
        }
        t->depth--;
    }
}

static int grow_stack(cn_calls_thread *t)
{
    if (t->depth < t->cap) {
        return 1;
    }
    if (t->cap >= MAX_DEPTH) {
        t->dropped++;
        return 0;
    }
    uint32_t cap = t->cap ? 2 * t->cap : 64;
    frame *s = realloc(t->stack, cap * sizeof *s);
    if (!s) {
        t->dropped++;
        return 0;
    }
    t->stack = s;
    t->cap = cap;
    return 1;
}

static uint64_t hash(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

static site *site_slot(site *sites, uint64_t cap, uint64_t ret_addr)
{
    uint64_t i = hash(ret_addr) & (cap - 1);
    while (sites[i].ret_addr && sites[i].ret_addr != ret_addr) {
        i = (i + 1) & (cap - 1);
    }
    return &sites[i];
}

/* remember who made the latest call returning to ret_addr (0 is never a return address here) */
static void note_site(cn_calls_thread *t, uint64_t ret_addr)
{
    if (!ret_addr) {
        return;
    }
    if (2 * (t->n_sites + 1) > t->cap_sites) {
        uint64_t cap = t->cap_sites ? 2 * t->cap_sites : 1024;
        site *grown = calloc(cap, sizeof *grown);
        if (!grown) {
            return;
        }
        for (uint64_t i = 0; i < t->cap_sites; i++) {
            if (t->sites[i].ret_addr) {
                *site_slot(grown, cap, t->sites[i].ret_addr) = t->sites[i];
            }
        }
        free(t->sites);
        t->sites = grown;
        t->cap_sites = cap;
    }
    site *s = site_slot(t->sites, t->cap_sites, ret_addr);
    if (!s->ret_addr) {
        t->n_sites++;
    }
    s->ret_addr = ret_addr;
    s->depth = t->depth;
    s->caller = t->depth ? t->stack[t->depth - 1].call_idx : NONE;
}

/* a jump (or unmatched return) to `to` at position `at`: longjmp back into a frame further up? */
static int unwind_to_site(cn_calls *w, cn_calls_thread *t, uint64_t to, uint64_t at)
{
    if (!t->cap_sites || !to) {
        return 0;
    }
    const site *s = site_slot(t->sites, t->cap_sites, to);
    if (s->ret_addr != to || s->depth >= t->depth) {
        return 0;
    }
    uint64_t caller = s->depth ? t->stack[s->depth - 1].call_idx : NONE;
    if (caller != s->caller) {
        return 0;  /* the frame that made that call has left the stack */
    }
    pop_to(w, t, s->depth, at, 0);
    return 1;
}

static void push(cn_calls_thread *t, uint8_t kind, uint64_t call_idx, uint64_t caller_pc, uint64_t callee_pc,
                 int callee_known, uint64_t ret_addr, uint64_t ran_before)
{
    if (!grow_stack(t)) {
        return;
    }
    frame *f = &t->stack[t->depth++];
    f->kind = kind;
    f->call_idx = call_idx;
    f->caller_pc = caller_pc;
    f->callee_pc = callee_pc;
    f->callee_known = (uint8_t)callee_known;
    f->ret_addr = ret_addr;
    f->sp = t->sp;
    f->sp_known = (uint8_t)t->sp_known;
    f->ran_before = ran_before;
}

static void do_return(cn_calls *w, cn_calls_thread *t, uint64_t at, uint64_t to)
{
    uint32_t scanned = 0;
    for (uint32_t d = t->depth; d-- > 0 && scanned++ < MAX_MATCH_SCAN;) {
        if (t->stack[d].kind == F_SIGNAL) {
            break;  /* a handler leaves by rt_sigreturn (or a longjmp), not by returning past its frame */
        }
        if (t->stack[d].ret_addr == to) {
            pop_to(w, t, d, at, 1);
            return;
        }
    }
    unwind_to_site(w, t, to, at);
}

static void do_sigreturn(cn_calls *w, cn_calls_thread *t, uint64_t at)
{
    for (uint32_t d = t->depth; d-- > 0;) {
        if (t->stack[d].kind == F_SIGNAL) {
            pop_to(w, t, d, at, 1);
            return;
        }
    }
}

static int is_sigreturn(cn_calls_thread *t, uint64_t last)
{
    while (t->next_sigret < t->n_sigret && t->sigret[t->next_sigret] < last) {
        t->next_sigret++;
    }
    return t->next_sigret < t->n_sigret && t->sigret[t->next_sigret] == last;
}

/* The transition from the thread's previous block to a block at pc `to` (has_next = 0: the thread ended). */
static void step(cn_calls *w, cn_calls_thread *t, int has_next, uint64_t to)
{
    uint32_t b = t->prev_block;
    uint32_t ran = t->prev_icount;
    uint64_t last = t->prev_idx + ran - 1;  /* position of the block's last executed instruction */
    if (is_sigreturn(t, last)) {
        do_sigreturn(w, t, last);
        return;
    }
    uint32_t full = w->n_insns[b];
    uint8_t kind = ran == full ? w->kind[b] : K_NONE;
    uint64_t end = w->end_pc[b], target = w->target[b];
    int interrupted = 0;
    if (ran < full) {
        /* cut short: it continues at the instruction that stopped it, or the one after it */
        interrupted = has_next && to != insn_pc(w, b, ran - 1) && to != insn_pc(w, b, ran);
    } else if (kind == K_CALL) {
        uint64_t ret_addr = w->ret_addr[b];
        /* no call: a "call" to its own return address (reading the pc: MIPS bal, i386 call/pop), or a
         * conditional call that fell through */
        if ((target && target == ret_addr) || (has_next && to == ret_addr)) {
            return;
        }
        uint64_t site_pc = w->site_pc[b];
        uint64_t call_idx = last - w->site_back[b];
        note_site(t, ret_addr);
        push(t, F_CALL, call_idx, site_pc, target ? target : to, target || has_next, ret_addr,
             ran_through(t, call_idx));
        interrupted = has_next && target && to != target;
    } else if (kind == K_RET) {
        uint64_t ret_at = last - w->site_back[b];
        if (has_next) {
            do_return(w, t, ret_at, to);
        } else if (t->depth && t->stack[t->depth - 1].kind == F_CALL) {
            pop_to(w, t, t->depth - 1, ret_at, 1);  /* the thread's last block: the return went nowhere recorded */
        }
    } else if (kind == K_INDIRECT) {
        if (has_next) {
            unwind_to_site(w, t, to, last);
        }
    } else if (kind == K_JUMP) {
        interrupted = has_next && to != target && to != end;
    } else if (kind == K_NONE) {
        interrupted = has_next && to != end && to != insn_pc(w, b, full - 1);
    }
    if (interrupted) {
        uint64_t at_pc = insn_pc(w, b, ran - 1);
        push(t, F_SIGNAL, last, at_pc, to, 1, 0, ran_through(t, last));
    }
}

/* Feed n executions of the thread, in position order, and the thread's sp changes (position, value), in
 * order, up to them.  Returns 0, or -1 for a block id without facts. */
EXPORT int cn_calls_feed(cn_calls *w, cn_calls_thread *t, const uint64_t *idx, const uint32_t *block,
                         const uint16_t *icount, uint64_t n, const uint64_t *sp_idx, const uint64_t *sp_value,
                         uint64_t n_sp)
{
    uint64_t s = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (block[i] >= w->n_blocks || !icount[i] || icount[i] > w->n_insns[block[i]]) {
            return -1;
        }
        while (s < n_sp && sp_idx[s] <= idx[i]) {
            t->sp = sp_value[s++];
            t->sp_known = 1;
        }
        uint64_t pc = insn_pc(w, block[i], 0);
        if (t->have_prev) {
            step(w, t, 1, pc);
            t->ran += t->prev_icount;
        }
        t->have_prev = 1;
        t->prev_idx = idx[i];
        t->prev_block = block[i];
        t->prev_icount = icount[i];
    }
    while (s < n_sp) {
        t->sp = sp_value[s++];
        t->sp_known = 1;
    }
    return w->oom ? -2 : 0;
}

/* The thread ended: its last block, then every frame still open becomes a row with no end. */
EXPORT int cn_calls_thread_end(cn_calls *w, cn_calls_thread *t)
{
    uint64_t last = 0;
    if (t->have_prev) {
        step(w, t, 0, 0);
        last = t->prev_idx + t->prev_icount - 1;
    }
    while (t->depth) {
        emit(w, t, t->depth - 1, last, 0, 1);
        t->depth--;
    }
    free(t->stack);
    free(t->sites);
    free(t->sigret);
    free(t);
    return w->oom ? -2 : 0;
}

EXPORT uint64_t cn_calls_pending(const cn_calls *w) { return w->n_rows; }

/* Copy the finished rows out, column by column (each n = cn_calls_pending long), and forget them. */
EXPORT void cn_calls_take(cn_calls *w, uint64_t *const u64[8], uint32_t *tid, uint32_t *depth, uint8_t *kind,
                          uint8_t *nulls)
{
    for (uint64_t i = 0; i < w->n_rows; i++) {
        const cn_call_row *r = &w->rows[i];
        u64[0][i] = r->call_idx;
        u64[1][i] = r->ret_idx;
        u64[2][i] = r->end_idx;
        u64[3][i] = r->caller_pc;
        u64[4][i] = r->callee_pc;
        u64[5][i] = r->parent;
        u64[6][i] = r->sp;
        u64[7][i] = r->insns;
        tid[i] = r->tid;
        depth[i] = r->depth;
        kind[i] = r->kind;
        nulls[i] = r->nulls;
    }
    w->n_rows = 0;
}
