/*
 * plugin.h -- internal interface between the plugin's source files.
 *
 *   plugin_main.c     install, options, mapping the ring, atexit
 *   plugin_lane.c     per-thread state, lanes (taking, publishing, waiting), events
 *   plugin_exec.c     block translation and execution, exact instruction counts
 *   plugin_mem.c      memory accesses with their values
 *   plugin_syscall.c  syscalls, their string and buffer arguments, ordering segments
 *   plugin_inline.c   records written by QEMU's generated code (qemu_patches/0004)
 *   plugin_regs.c     registers at block entry (plugin API >= 2)
 *   plugin_reg_writes.c  which registers a block may write (capstone)
 *   plugin_compat.c   what differs between plugin API versions and keeps state
 */
#ifndef CN_PLUGIN_H
#define CN_PLUGIN_H

#include <stdbool.h>
#include <stdint.h>
#include "qemu_plugin_api.h"
#include "../cannoli_format.h"
#include "../cannoli_ring.h"

#define CN_HIDDEN __attribute__((visibility("hidden")))
#define CN_LIKELY(x) __builtin_expect(!!(x), 1)
#define CN_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* What the plugin keeps about one translated block (never freed: QEMU may run
 * a translation until the end). */
struct cn_tb {
    uint64_t pc;
    uint32_t block_id;
    uint16_t n_insns;
    uint16_t n_bytes;
    uint64_t *insn_pc;      /* n_insns entries                                   */
    uint8_t *insn_size;     /* n_insns entries                                   */
    uint8_t *bytes;         /* n_bytes                                           */
    uint32_t *twin_id;      /* lazily: twin_id[k] = id of the k-instruction prefix */
    uint64_t *hits;         /* API 1: block-end counter in the ring                   */
    bool end_counted;       /* a block-end counter counts the last instruction; else a
                               callback marks it (plugin_compat.c)                     */
    uint64_t reg_writes;    /* bit r: the block may write recorded register r        */
};

/* The thread's current block travels with it from lane to lane: whether it
 * finished, how far it got, and its block-end counter snapshot. */
struct cn_block_state {
    uint32_t done, accessed, block;
    uint64_t snap;
};

/* One guest thread (= one host thread in QEMU user mode). */
struct cn_thread {
    struct cn_lane_header *lane;   /* NULL until the thread's first event       */
    uint32_t *exec;                /* the lane's sections, cached for the hot path */
    uint64_t *mem_addr;
    uint64_t *mem_value;
    uint32_t *mem_info;
    const struct cn_tb *cur;       /* block executing now                        */
    uint64_t exec_ord;             /* blocks started so far                      */
    uint64_t segment_start;        /* first exec ordinal of the open segment     */
    uint64_t seg_insns;            /* instructions of the open segment's execs     */
    uint64_t cur_before;           /* instructions of the current block's segment that
                                      precede it                                    */
    uint32_t cur_insns;            /* the current block's counted instructions: all
                                      of them until it is found cut short          */
    uint32_t stream;               /* stream id, unique in the recording         */
    uint64_t packet_seq;
    uint32_t pid, tid, parent_pid;
    unsigned int vcpu;             /* QEMU's vCPU index of this thread            */
    uint64_t *regs;                /* register values at the previous block entry  */
    void *reg_buf;                 /* GByteArray QEMU reads registers into         */
    bool regs_resync;              /* read every register at the next block entry */
    bool started;
    bool inline_ready;             /* its record buffer is set (plugin_inline.c) */
    bool call_pending;             /* the open syscall has buffers to copy at its return */
    int64_t call_nr;               /* ... its number and arguments (plugin_syscall.c) */
    uint64_t call_args[6];
    bool handed_over;              /* the lane went to the recorder at an exec call;
                                      the next lane continues from `resume`      */
    struct cn_block_state resume;
};

/* Global state, set once in qemu_plugin_install. */
struct cn_config {
    struct cn_ring_header *ring;
    struct cn_lane_layout layout;
    bool record_mem;
    bool record_regs;              /* wanted: regs=on (default on API >= 2)       */
    bool regs_check;               /* regs=check: read all, count what the masks missed */
    bool x86_flags;                /* x86_flags=on: this QEMU computes eflags for plugins */
    bool inline_records;           /* QEMU's generated code writes the records of
                                      blocks, accesses and registers (plugin_inline.c) */
    uint64_t guest_base;
    bool guest_base_known;
    bool process_recorded;
    const char *target;
};

extern CN_HIDDEN struct cn_config cn_cfg;
extern __thread struct cn_thread cn_self __attribute__((tls_model("initial-exec")));

/* plugin_lane.c */
CN_HIDDEN struct cn_thread *cn_thread_begin(struct cn_thread *t);
/* Publish the full lane and take a fresh one.  The open segment is closed
 * first, without the current block unless it is known to be complete
 * (between_blocks, or cur_done): a packet then ends at a segment boundary or
 * with only the current block, whose count may still change, left open.  In
 * the middle of a block the new lane repeats that block as its exec[0]
 * (CN_PACKET_CONTINUES) for the records it still makes. */
CN_HIDDEN void cn_lane_rollover(struct cn_thread *t, bool between_blocks);
CN_HIDDEN void cn_lane_publish(struct cn_thread *t, uint32_t flags);
/* An exec call is entered: publish the lane now, for the program may be gone
 * at its return (a followed exec runs it in a new QEMU, which starts a new
 * stream).  If the call fails, the thread's next event takes a lane that
 * continues the syscall's block, as a rollover's would. */
CN_HIDDEN void cn_lane_hand_over(struct cn_thread *t);
CN_HIDDEN struct cn_event *cn_event_new(struct cn_thread *t, uint16_t kind, uint64_t ordinal);
CN_HIDDEN void cn_event_commit(struct cn_thread *t);
/* Close the open segment at end_ordinal (the thread's exec_ord, or exec_ord - 1
 * to leave the current block in the next segment): draw its global positions
 * and write the SEGMENT event.  Returns the event's seq. */
CN_HIDDEN uint64_t cn_segment_close(struct cn_thread *t, uint64_t end_ordinal);
CN_HIDDEN void cn_thread_exit(struct cn_thread *t);
CN_HIDDEN void cn_lane_install_fork_handler(void);
CN_HIDDEN bool cn_lane_reserve(struct cn_thread *t, int section, uint32_t n);

/* The calling guest thread's state, with a lane to write to. */
static inline struct cn_thread *cn_thread_self(void)
{
    struct cn_thread *t = &cn_self;
    if (CN_LIKELY(t->lane != NULL)) {
        return t;
    }
    return cn_thread_begin(t);
}

static inline void *cn_sec(struct cn_lane_header *lane, int s)
{
    return cn_lane_section(lane, &cn_cfg.layout, s);
}

static inline void cn_count_set(struct cn_lane_header *lane, int s, uint32_t v)
{
    /* release: the recorder may salvage the lane at any moment after a crash,
     * and must never see a count that covers a half-written record */
    __atomic_store_n(&lane->count[s], v, __ATOMIC_RELEASE);
}

/* plugin_main.c: QEMU has logged the loaded program's layout; stop the log */
CN_HIDDEN void cn_layout_logged(void);

/* plugin_exec.c */
CN_HIDDEN void vcpu_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
/* the thread is dying of a signal inside its current block (atexit) */
CN_HIDDEN void cn_resolve_at_exit(struct cn_thread *t);


/* A block started (its exec record), with the registers at its entry:
 * `values` as plugin_inline.c found them in its record, or NULL to read them
 * through QEMU (only where registers are recorded). */
CN_HIDDEN void cn_exec_block(struct cn_thread *t, const struct cn_tb *d, const uint64_t *values);
/* The block's last instruction, index `last`, started. */
static inline void cn_exec_last_insn(struct cn_thread *t, uint32_t last)
{
    t->lane->cur_accessed = last + 1u;
    t->lane->cur_done = 1;
}

/* plugin_mem.c */
CN_HIDDEN void vcpu_mem(unsigned int vcpu_index, qemu_plugin_meminfo_t info,
                        uint64_t vaddr, void *udata);

/* One access: word is the info word without its link, which names the lane's
 * last exec. */
static inline void cn_put_access(struct cn_thread *t, uint64_t vaddr, uint64_t value, uint32_t word)
{
    struct cn_lane_header *lane = t->lane;
    uint32_t n = lane->count[CN_SEC_MEM_ADDR];
    if (CN_UNLIKELY(n == CN_CAP_MEM)) {
        cn_lane_rollover(t, false);
        lane = t->lane;
        n = 0;
    }
    t->mem_addr[n] = vaddr;
    t->mem_value[n] = value;
    t->mem_info[n] = word | (lane->count[CN_SEC_EXEC] << CN_MEMINFO_LINK_SHIFT);
    /* the three mem sections share one count: MEM_ADDR's */
    cn_count_set(lane, CN_SEC_MEM_ADDR, n + 1);
}

/* plugin_inline.c */
CN_HIDDEN void cn_inline_init(void);
CN_HIDDEN void cn_inline_vcpu_init(unsigned int vcpu_index);
/* After the first vCPU chose its registers: record them inline if QEMU can. */
CN_HIDDEN void cn_inline_regs_select(const char *const *names, unsigned int n);
CN_HIDDEN void cn_inline_instrument(struct qemu_plugin_tb *tb, struct cn_tb *d);
/* Take the calling thread's records out of its buffer, into its lane. */
CN_HIDDEN void cn_inline_flush(struct cn_thread *t);
/* exit_group: the other threads' buffers too (their lanes stay for salvage). */
CN_HIDDEN void cn_inline_flush_others(struct cn_thread *self);
/* The calling thread's records are moved by plugin code: hold its lock (atexit
 * may flush its buffer from another thread). */
CN_HIDDEN void cn_inline_lock(struct cn_thread *t);
CN_HIDDEN void cn_inline_unlock(struct cn_thread *t);
CN_HIDDEN void cn_inline_after_fork_child(struct cn_thread *t);
/* The thread ended: nothing may flush it any more. */
CN_HIDDEN void cn_inline_forget(struct cn_thread *t);

/* plugin_regs.c */
CN_HIDDEN void cn_regs_select(qemu_plugin_id_t id, unsigned int vcpu_index);
CN_HIDDEN void cn_regs_emit_names(struct cn_thread *t);
/* values: every register in number order (a register record), or NULL to
 * read the wanted ones through QEMU */
CN_HIDDEN void cn_regs_record(struct cn_thread *t, uint64_t wanted, const uint64_t *values);
CN_HIDDEN unsigned int cn_regs_count(void);
CN_HIDDEN void cn_regs_keyframe(struct cn_thread *t);
/* plugin_reg_writes.c */
CN_HIDDEN void cn_reg_writes_init(const char *const *names, unsigned int n);
CN_HIDDEN uint64_t cn_reg_writes(const struct cn_tb *d);
CN_HIDDEN void cn_regs_forget(struct cn_thread *t);

/* plugin_syscall.c */
CN_HIDDEN void vcpu_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                            uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4,
                            uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);
CN_HIDDEN void vcpu_syscall_ret(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                                int64_t ret);
CN_HIDDEN bool cn_syscall_table_select(const char *target);
/* Could a block that starts at pc be the entry of a signal handler? */
CN_HIDDEN bool cn_may_be_signal_entry(uint64_t pc);

#endif
