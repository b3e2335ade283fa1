/*
 * plugin_lane.c -- per-thread state and lanes: taking a free lane, publishing a
 * full one, waiting (losslessly) when none is free, and writing events.
 *
 * Each guest thread is a host thread in QEMU user mode, so thread state is a
 * thread-local variable (initial-exec TLS: a general-dynamic access in a
 * dlopen'ed plugin costs a __tls_get_addr call per event).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "plugin.h"

__thread struct cn_thread cn_self __attribute__((tls_model("initial-exec")));

/* Exit status of QEMU when the recorder vanished: the recording cannot go on
 * losslessly, so the guest is stopped rather than run unrecorded. */
#define CN_EXIT_RECORDER_GONE 70

static bool recorder_alive(void)
{
    struct cn_ring_header *r = cn_cfg.ring;
    if (__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
        return false;
    }
    return !(kill((pid_t)r->recorder_pid, 0) != 0 && errno == ESRCH);
}

static void wait_for_free_lane(unsigned spins)
{
    if (spins == 0) {
        __atomic_add_fetch(&cn_cfg.ring->producer_waits, 1, __ATOMIC_RELAXED);
    }
    if (spins < 64) {
        sched_yield();
        return;
    }
    struct timespec ts = { 0, 200 * 1000 };
    nanosleep(&ts, NULL);
    if (spins % 2048 == 0 && !recorder_alive()) {
        fprintf(stderr,
                "cannoli: the recorder process (pid %u) is gone; stopping the guest "
                "because nothing more can be recorded\n",
                cn_cfg.ring->recorder_pid);
        _exit(CN_EXIT_RECORDER_GONE);
    }
}

static struct cn_lane_header *lane_take(uint32_t hint)
{
    struct cn_ring_header *r = cn_cfg.ring;
    for (unsigned spins = 0;; spins++) {
        for (uint32_t i = 0; i < r->n_lanes; i++) {
            struct cn_lane_header *lane = cn_ring_lane(r, (hint + i) % r->n_lanes);
            uint32_t expected = CN_LANE_FREE;
            if (__atomic_compare_exchange_n(&lane->state, &expected, CN_LANE_OWNED, false,
                                            __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
                return lane;
            }
        }
        wait_for_free_lane(spins);
    }
}

/* continues: the thread is inside its current block, which exec[0] repeats */
static void lane_begin(struct cn_thread *t, struct cn_block_state cur, bool continues)
{
    struct cn_lane_header *lane = lane_take(t->tid);
    lane->flags = continues ? CN_PACKET_CONTINUES : 0;
    lane->pid = t->pid;
    lane->tid = t->tid;
    lane->packet_seq = t->packet_seq++;
    lane->exec_first = continues ? t->exec_ord - 1 : t->exec_ord;
    lane->cur_done = cur.done;
    lane->cur_accessed = cur.accessed;
    lane->cur_block = cur.block;
    lane->cur_snap = cur.snap;
    lane->stream = t->stream;
    lane->seg_insns = continues ? t->cur_before : t->seg_insns;
    for (int s = 0; s < CN_NSECTIONS; s++) {
        lane->count[s] = 0;
    }
    t->exec = cn_sec(lane, CN_SEC_EXEC);
    t->mem_addr = cn_sec(lane, CN_SEC_MEM_ADDR);
    t->mem_value = cn_sec(lane, CN_SEC_MEM_VALUE);
    t->mem_info = cn_sec(lane, CN_SEC_MEM_INFO);
    t->lane = lane;
    if (continues) {
        t->exec[0] = cur.block;
        cn_count_set(lane, CN_SEC_EXEC, 1);
        cn_regs_keyframe(t);
    }
}

void cn_lane_publish(struct cn_thread *t, uint32_t flags)
{
    struct cn_lane_header *lane = t->lane;
    lane->flags |= flags;
    t->lane = NULL;
    __atomic_add_fetch(&cn_cfg.ring->lanes_published, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&lane->state, CN_LANE_FULL, __ATOMIC_RELEASE);
}

/* One event slot of every lane is kept for the SEGMENT event a rollover writes. */
static uint32_t usable_capacity(int section)
{
    return cn_cfg.layout.capacity[section] - (section == CN_SEC_EVENT ? 1u : 0u);
}

bool cn_lane_reserve(struct cn_thread *t, int section, uint32_t n)
{
    if (t->lane->count[section] + n > usable_capacity(section)) {
        cn_lane_rollover(t, false);
    }
    return n <= usable_capacity(section);
}

static struct cn_event *event_at_end(struct cn_thread *t, uint16_t kind, uint64_t ordinal)
{
    struct cn_event *ev = (struct cn_event *)cn_sec(t->lane, CN_SEC_EVENT) +
                          t->lane->count[CN_SEC_EVENT];
    memset(ev, 0, sizeof(*ev));
    ev->kind = kind;
    ev->ordinal = ordinal;
    return ev;
}

struct cn_event *cn_event_new(struct cn_thread *t, uint16_t kind, uint64_t ordinal)
{
    cn_lane_reserve(t, CN_SEC_EVENT, 1);
    return event_at_end(t, kind, ordinal);
}

void cn_event_commit(struct cn_thread *t)
{
    cn_count_set(t->lane, CN_SEC_EVENT, t->lane->count[CN_SEC_EVENT] + 1);
}

/* in_reserved_slot: a rollover's close, written into the slot kept for it */
static uint64_t segment_close(struct cn_thread *t, uint64_t end_ordinal, bool in_reserved_slot)
{
    /* (taking the event slot may roll the lane over, which closes a segment:
     * the counts below are read after it) */
    struct cn_event *ev = in_reserved_slot ? event_at_end(t, CN_EV_SEGMENT, end_ordinal)
                                           : cn_event_new(t, CN_EV_SEGMENT, end_ordinal);
    /* the current block stays open when the segment ends before it */
    bool carried = end_ordinal < t->exec_ord && t->cur;
    uint64_t carry = carried ? t->cur_insns : 0;
    uint64_t insns = t->seg_insns - carry;
    uint64_t first = __atomic_fetch_add(&cn_cfg.ring->next_idx, insns, __ATOMIC_SEQ_CST);
    ev->seq = first + insns;
    ev->v[0] = first;
    ev->v[1] = insns;
    cn_event_commit(t);
    t->segment_start = end_ordinal;
    t->seg_insns = carry;
    if (carried) {
        t->cur_before = 0; /* the current block begins the next segment */
    }
    /* every segment (syscalls close one) reads all registers again: a keyframe */
    t->regs_resync = true;
    return ev->seq;
}

uint64_t cn_segment_close(struct cn_thread *t, uint64_t end_ordinal)
{
    return segment_close(t, end_ordinal, false);
}

void cn_lane_rollover(struct cn_thread *t, bool between_blocks)
{
    struct cn_lane_header *old = t->lane;
    bool current_complete = between_blocks || old->cur_done || t->cur == NULL;
    uint64_t end = t->exec_ord - (current_complete || t->exec_ord == 0 ? 0 : 1);
    if (end > t->segment_start) {
        segment_close(t, end, true);
    }
    struct cn_block_state cur = { old->cur_done, old->cur_accessed, old->cur_block, old->cur_snap };
    cn_lane_publish(t, 0);
    lane_begin(t, cur, !between_blocks && t->cur != NULL);
}

void cn_lane_hand_over(struct cn_thread *t)
{
    struct cn_lane_header *lane = t->lane;
    t->resume = (struct cn_block_state){ lane->cur_done, lane->cur_accessed, lane->cur_block, lane->cur_snap };
    t->handed_over = true;
    cn_lane_publish(t, 0);
}

static uint64_t position_now(void)
{
    return __atomic_load_n(&cn_cfg.ring->next_idx, __ATOMIC_SEQ_CST);
}

struct cn_thread *cn_thread_begin(struct cn_thread *t)
{
    if (!t->started) {
        t->started = true;
        t->pid = (uint32_t)getpid();
        t->tid = (uint32_t)syscall(SYS_gettid);
        t->stream = (uint32_t)__atomic_fetch_add(&cn_cfg.ring->next_stream, 1, __ATOMIC_RELAXED);
        lane_begin(t, (struct cn_block_state){ 1, 0, 0, 0 }, false);
        struct cn_event *ev = cn_event_new(t, CN_EV_THREAD_START, t->exec_ord);
        ev->seq = position_now();
        ev->v[0] = t->pid;
        ev->v[1] = t->tid;
        ev->v[2] = t->parent_pid;
        cn_event_commit(t);
    } else if (t->handed_over) {
        t->handed_over = false; /* the exec call failed: the thread goes on here */
        lane_begin(t, t->resume, t->cur != NULL);
    } else {
        lane_begin(t, (struct cn_block_state){ 1, 0, 0, 0 }, false);
    }
    return t;
}

void cn_thread_exit(struct cn_thread *t)
{
    uint64_t seq = cn_segment_close(t, t->exec_ord);
    struct cn_event *ev = cn_event_new(t, CN_EV_THREAD_EXIT, t->exec_ord);
    ev->seq = seq;
    cn_event_commit(t);
    cn_lane_publish(t, CN_PACKET_LAST);
    cn_regs_forget(t);
}

/* A forked child inherits the ring mapping and this thread's variables, but
 * the lane belongs to the parent: start a new stream for the child. */
static void after_fork_in_child(void)
{
    struct cn_thread *t = &cn_self;
    uint32_t parent = t->pid;
    unsigned int vcpu = t->vcpu;
    bool inline_ready = t->inline_ready;
    memset(t, 0, sizeof(*t));
    t->parent_pid = parent;
    t->vcpu = vcpu;
    t->inline_ready = inline_ready;
    cn_inline_after_fork_child(t);
}

void cn_lane_install_fork_handler(void)
{
    pthread_atfork(NULL, NULL, after_fork_in_child);
}
