/*
 * plugin_syscall.c -- syscalls with all six arguments and the return value,
 * the path strings they pass, and the ordering segments they close.
 *
 * A syscall closes the thread's ordering segment at its entry with a fresh
 * global sequence number, so syscalls of different threads are totally ordered
 * by entry, and instructions after a blocking call returns are ordered after
 * everything that happened before it was entered.
 *
 * Path arguments are guest pointers that QEMU reads without a guest load, so
 * they would be lost unless copied here.  They are read with
 * process_vm_readv, which fails cleanly on a bad pointer instead of faulting.
 *
 * rt_sigaction calls are watched for the handler addresses they install: the
 * only way a block stops before its last instruction and continues at a pc
 * outside itself is a signal delivered to a handler, and plugin_exec.c needs
 * to tell that apart from a lost update of a shared block-end counter.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "plugin.h"

/* Which arguments (0-based) of a syscall are path strings, per target. */
struct path_args {
    int nr;
    int8_t arg[2]; /* -1: none */
};

/* Where a target's rt_sigaction finds the handler in its struct sigaction. */
struct sigaction_abi {
    int nr;
    unsigned handler_offset; /* bytes                                 */
    unsigned handler_size;   /* bytes: the guest's pointer size         */
};

struct target_tables {
    const char *target;
    const struct path_args *paths;
    size_t n_paths;
    const struct sigaction_abi *sigaction;
};

#include "syscall_tables.h"

static const struct path_args *paths;
static size_t n_paths;
static const struct sigaction_abi *sigaction_abi;
static uint64_t pointer_mask = ~0ull; /* a 32-bit guest's registers arrive sign-extended */

/* Every handler address ever installed (never removed: a handler may be
 * entered for a signal that was pending when it was replaced). */
#define CN_MAX_HANDLERS 256
static uint64_t handlers[CN_MAX_HANDLERS];
static unsigned n_handlers;
static bool handlers_unknown = true; /* until a target's ABI is known */
static pthread_mutex_t handlers_lock = PTHREAD_MUTEX_INITIALIZER;

bool cn_syscall_table_select(const char *target)
{
    for (size_t i = 0; i < sizeof(target_tables) / sizeof(target_tables[0]); i++) {
        const struct target_tables *t = &target_tables[i];
        if (strcmp(target, t->target) == 0) {
            paths = t->paths;
            n_paths = t->n_paths;
            sigaction_abi = t->sigaction;
            pointer_mask = t->sigaction->handler_size == 4 ? 0xffffffffull : ~0ull;
            handlers_unknown = false;
            return true;
        }
    }
    return false; /* syscalls are still recorded; path strings are not */
}

bool cn_may_be_signal_entry(uint64_t pc)
{
    if (__atomic_load_n(&handlers_unknown, __ATOMIC_ACQUIRE)) {
        return true;
    }
    unsigned n = __atomic_load_n(&n_handlers, __ATOMIC_ACQUIRE);
    for (unsigned i = 0; i < n; i++) {
        if (handlers[i] == pc) {
            return true;
        }
    }
    return false;
}

/* Copy len bytes of guest memory; false if any of it is unreadable. */
static bool read_guest_bytes(uint64_t addr, void *dest, size_t len)
{
    struct iovec local = { dest, len };
    struct iovec remote = { (void *)(uintptr_t)(cn_cfg.guest_base + addr), len };
    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)len;
}

static void note_signal_handler(uint64_t act)
{
    uint64_t handler = 0; /* little-endian hosts and guests: a 4-byte read fills the low half */
    act &= pointer_mask;
    if (!act || !read_guest_bytes(act + sigaction_abi->handler_offset, &handler,
                                  sigaction_abi->handler_size)) {
        return; /* no new action, or the kernel will refuse it too */
    }
    if (handler <= 1) {
        return; /* SIG_DFL, SIG_IGN */
    }
    pthread_mutex_lock(&handlers_lock);
    if (!cn_may_be_signal_entry(handler)) {
        if (n_handlers == CN_MAX_HANDLERS) {
            __atomic_store_n(&handlers_unknown, true, __ATOMIC_RELEASE);
        } else {
            handlers[n_handlers] = handler;
            __atomic_store_n(&n_handlers, n_handlers + 1, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&handlers_lock);
}

static const struct path_args *path_args_of(int64_t nr)
{
    for (size_t i = 0; i < n_paths; i++) {
        if (paths[i].nr == nr) {
            return &paths[i];
        }
    }
    return NULL;
}

/* Copy the guest string at addr into dest (at most cap bytes, no NUL).
 * Returns its length, or -1 if the first byte is unreadable. */
static long read_guest_string(uint64_t addr, uint8_t *dest, size_t cap, bool *truncated)
{
    size_t got = 0;
    *truncated = false;
    while (got < cap) {
        uint64_t host = cn_cfg.guest_base + addr + got;
        size_t room = 4096 - (host & 4095); /* never cross a page in one read */
        if (room > cap - got) {
            room = cap - got;
        }
        struct iovec local = { dest + got, room };
        struct iovec remote = { (void *)(uintptr_t)host, room };
        ssize_t n = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
        if (n <= 0) {
            return got ? (long)got : -1;
        }
        void *nul = memchr(dest + got, 0, (size_t)n);
        if (nul) {
            return (long)((uint8_t *)nul - dest);
        }
        got += (size_t)n;
    }
    *truncated = true;
    return (long)got;
}

static void record_string(struct cn_thread *t, int64_t nr, int arg, uint64_t addr)
{
    cn_lane_reserve(t, CN_SEC_BLOB, CN_MAX_BLOB_ITEM);
    cn_lane_reserve(t, CN_SEC_EVENT, 1);
    struct cn_lane_header *lane = t->lane;
    uint32_t off = lane->count[CN_SEC_BLOB];
    uint8_t *dest = (uint8_t *)cn_sec(lane, CN_SEC_BLOB) + off;
    bool truncated;
    long len = read_guest_string(addr, dest, CN_MAX_BLOB_ITEM, &truncated);
    uint64_t flags = CN_BLOB_STRING;
    if (len < 0) {
        flags |= CN_BLOB_UNREADABLE;
        len = 0;
    }
    if (truncated) {
        flags |= CN_BLOB_TRUNCATED;
    }
    cn_count_set(lane, CN_SEC_BLOB, off + (uint32_t)len);
    struct cn_event *ev = cn_event_new(t, CN_EV_BLOB, t->exec_ord - 1);
    ev->v[0] = addr;
    ev->v[1] = off;
    ev->v[2] = (uint64_t)len;
    ev->v[3] = (uint64_t)nr;
    ev->v[4] = (uint64_t)arg;
    ev->v[5] = flags;
    cn_event_commit(t);
}

void vcpu_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1,
                  uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7,
                  uint64_t a8)
{
    (void)id, (void)vcpu_index, (void)a7, (void)a8;
    struct cn_thread *t = cn_thread_self();
    /* a syscall instruction always ends its block: the block ran to its end */
    if (t->cur) {
        t->lane->cur_done = 1;
        t->lane->cur_progress = t->cur->n_insns;
    }
    uint64_t seq = cn_segment_close(t, t->exec_ord);

    struct cn_event *ev = cn_event_new(t, CN_EV_SYSCALL, t->exec_ord - 1);
    const uint64_t args[6] = { a1, a2, a3, a4, a5, a6 };
    ev->seq = seq;
    ev->v[0] = (uint64_t)num;
    memcpy(&ev->v[1], args, sizeof(args));
    cn_event_commit(t);

    if (sigaction_abi && num == sigaction_abi->nr) {
        note_signal_handler(a2);
    }
    const struct path_args *p = path_args_of(num);
    for (int i = 0; p && i < 2; i++) {
        if (p->arg[i] >= 0) {
            record_string(t, num, p->arg[i], args[p->arg[i]] & pointer_mask);
        }
    }
}

void vcpu_syscall_ret(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, int64_t ret)
{
    (void)id, (void)vcpu_index;
    struct cn_thread *t = cn_thread_self();
    struct cn_event *ev = cn_event_new(t, CN_EV_SYSRET, t->exec_ord - 1);
    ev->v[0] = (uint64_t)num;
    ev->v[1] = (uint64_t)ret;
    cn_event_commit(t);
}
