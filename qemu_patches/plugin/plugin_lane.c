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

uint64_t cn_seq_next(void)
{
    return __atomic_add_fetch(&cn_cfg.ring->seq, 1, __ATOMIC_SEQ_CST);
}

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

/* The thread's current block travels with it from lane to lane: whether it
 * finished, how far it got, and its block-end counter snapshot. */
struct cn_block_state {
    uint32_t done, progress, block;
    uint64_t snap;
};

static void lane_begin(struct cn_thread *t, struct cn_block_state cur)
{
    struct cn_lane_header *lane = lane_take(t->tid);
    lane->flags = 0;
    lane->pid = t->pid;
    lane->tid = t->tid;
    lane->packet_seq = t->packet_seq++;
    lane->exec_first = t->exec_ord;
    lane->cur_done = cur.done;
    lane->cur_progress = cur.progress;
    lane->cur_block = cur.block;
    lane->cur_snap = cur.snap;
    for (int s = 0; s < CN_NSECTIONS; s++) {
        lane->count[s] = 0;
    }
    t->exec = cn_sec(lane, CN_SEC_EXEC);
    t->mem_addr = cn_sec(lane, CN_SEC_MEM_ADDR);
    t->mem_value = cn_sec(lane, CN_SEC_MEM_VALUE);
    t->mem_info = cn_sec(lane, CN_SEC_MEM_INFO);
    t->lane = lane;
}

void cn_lane_publish(struct cn_thread *t, uint32_t flags)
{
    struct cn_lane_header *lane = t->lane;
    lane->flags |= flags;
    t->lane = NULL;
    __atomic_add_fetch(&cn_cfg.ring->lanes_published, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&lane->state, CN_LANE_FULL, __ATOMIC_RELEASE);
}

void cn_lane_rollover(struct cn_thread *t)
{
    struct cn_lane_header *old = t->lane;
    struct cn_block_state cur = { old->cur_done, old->cur_progress, old->cur_block, old->cur_snap };
    cn_lane_publish(t, 0);
    lane_begin(t, cur);
}

bool cn_lane_reserve(struct cn_thread *t, int section, uint32_t n)
{
    if (t->lane->count[section] + n > cn_cfg.layout.capacity[section]) {
        cn_lane_rollover(t);
    }
    return n <= cn_cfg.layout.capacity[section];
}

struct cn_event *cn_event_new(struct cn_thread *t, uint16_t kind, uint64_t ordinal)
{
    cn_lane_reserve(t, CN_SEC_EVENT, 1);
    struct cn_event *ev = (struct cn_event *)cn_sec(t->lane, CN_SEC_EVENT) +
                          t->lane->count[CN_SEC_EVENT];
    memset(ev, 0, sizeof(*ev));
    ev->kind = kind;
    ev->ordinal = ordinal;
    return ev;
}

void cn_event_commit(struct cn_thread *t)
{
    cn_count_set(t->lane, CN_SEC_EVENT, t->lane->count[CN_SEC_EVENT] + 1);
}

uint64_t cn_segment_close(struct cn_thread *t, uint64_t end_ordinal)
{
    struct cn_event *ev = cn_event_new(t, CN_EV_SEGMENT, end_ordinal);
    uint64_t seq = cn_seq_next();
    ev->seq = seq;
    cn_event_commit(t);
    t->segment_start = end_ordinal;
    /* every segment (syscalls close one) reads all registers again */
    t->regs_resync = true;
    return seq;
}

struct cn_thread *cn_thread_begin(struct cn_thread *t)
{
    if (!t->started) {
        t->started = true;
        t->pid = (uint32_t)getpid();
        t->tid = (uint32_t)syscall(SYS_gettid);
        lane_begin(t, (struct cn_block_state){ 1, 0, 0, 0 });
        struct cn_event *ev = cn_event_new(t, CN_EV_THREAD_START, t->exec_ord);
        ev->seq = cn_seq_next();
        ev->v[0] = t->pid;
        ev->v[1] = t->tid;
        ev->v[2] = t->parent_pid;
        cn_event_commit(t);
    } else {
        lane_begin(t, (struct cn_block_state){ 1, 0, 0, 0 });
    }
    return t;
}

void cn_thread_exit(struct cn_thread *t)
{
    cn_segment_close(t, t->exec_ord);
    struct cn_event *ev = cn_event_new(t, CN_EV_THREAD_EXIT, t->exec_ord);
    ev->seq = cn_seq_next();
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
    memset(t, 0, sizeof(*t));
    t->parent_pid = parent;
}

void cn_lane_install_fork_handler(void)
{
    pthread_atfork(NULL, NULL, after_fork_in_child);
}
