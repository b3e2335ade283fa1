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
 * they would be lost unless copied here.  So are the buffers the kernel reads
 * (write's data, copied at entry) or fills (read's data, a stat struct,
 * copied at return): never more than the call's own length, the struct's size
 * or CN_MAX_BLOB_ITEM.  All are read with process_vm_readv, which fails
 * cleanly on a bad pointer instead of faulting.
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

/* How many bytes a buffer argument holds. */
enum buffer_len {
    CN_LEN_ARG,   /* the value of argument len_arg                              */
    CN_LEN_RET,   /* the return value (at return)                               */
    CN_LEN_FIXED, /* `size` bytes: a struct                                     */
    CN_LEN_IOV,   /* an array of argument-len_arg iovecs of `size` bytes each     */
};

/* An argument that points to memory the kernel reads or writes, per target. */
struct buffer_arg {
    int nr;
    int8_t arg;        /* 0-based                                                 */
    uint8_t at_return; /* 1: the kernel fills it; copy it when the call returns  */
    uint8_t len;       /* enum buffer_len                                         */
    int8_t len_arg;
    uint16_t size;
};

struct target_tables {
    const char *target;
    const struct path_args *paths;
    size_t n_paths;
    const struct buffer_arg *buffers;
    size_t n_buffers;
    const struct sigaction_abi *sigaction;
    int exec_calls[2];  /* execve, execveat: the thread may become another program */
};

#include "syscall_tables.h"

static const struct path_args *paths;
static size_t n_paths;
static const struct buffer_arg *buffers;
static size_t n_buffers;
static const struct sigaction_abi *sigaction_abi;
static int exec_calls[2] = { -1, -1 };
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
            buffers = t->buffers;
            n_buffers = t->n_buffers;
            sigaction_abi = t->sigaction;
            memcpy(exec_calls, t->exec_calls, sizeof(exec_calls));
            pointer_mask = t->sigaction->handler_size == 4 ? 0xffffffffull : ~0ull;
            handlers_unknown = false;
            return true;
        }
    }
    return false; /* syscalls are still recorded; path strings and buffers are not */
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

/* Copy up to len bytes of guest memory at addr into dest, a page at a time,
 * up to the first unreadable page (or the first NUL, not copied, if nul_ends).
 * Returns the bytes copied, or -1 if the first byte is unreadable. */
static long read_guest_prefix(uint64_t addr, uint8_t *dest, size_t len, bool nul_ends)
{
    size_t got = 0;
    while (got < len) {
        uint64_t host = cn_cfg.guest_base + addr + got;
        size_t room = 4096 - (host & 4095); /* never cross a page in one read */
        if (room > len - got) {
            room = len - got;
        }
        struct iovec local = { dest + got, room };
        struct iovec remote = { (void *)(uintptr_t)host, room };
        ssize_t n = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
        if (n <= 0) {
            return got ? (long)got : -1;
        }
        void *nul = nul_ends ? memchr(dest + got, 0, (size_t)n) : NULL;
        if (nul) {
            return (long)((uint8_t *)nul - dest);
        }
        got += (size_t)n;
    }
    return (long)got;
}

/* Room in the lane for one blob of up to CN_MAX_BLOB_ITEM bytes and its event
 * (both land in the same packet); returns where the bytes go. */
static uint8_t *blob_room(struct cn_thread *t, uint32_t *off)
{
    cn_lane_reserve(t, CN_SEC_BLOB, CN_MAX_BLOB_ITEM);
    cn_lane_reserve(t, CN_SEC_EVENT, 1);
    *off = t->lane->count[CN_SEC_BLOB];
    return (uint8_t *)cn_sec(t->lane, CN_SEC_BLOB) + *off;
}

/* The BLOB event for the len bytes just written at blob offset off. */
static void blob_commit(struct cn_thread *t, uint32_t off, long len, uint64_t addr, int64_t nr, int arg,
                        uint64_t item, uint64_t flags)
{
    if (len < 0) {
        flags |= CN_BLOB_UNREADABLE;
        len = 0;
    }
    cn_count_set(t->lane, CN_SEC_BLOB, off + (uint32_t)len);
    struct cn_event *ev = cn_event_new(t, CN_EV_BLOB, t->exec_ord - 1);
    ev->v[0] = addr;
    ev->v[1] = off;
    ev->v[2] = (uint64_t)len;
    ev->v[3] = (uint64_t)nr;
    ev->v[4] = (uint64_t)arg;
    ev->v[5] = flags;
    ev->v[6] = item;
    cn_event_commit(t);
}

static void record_string(struct cn_thread *t, int64_t nr, int arg, uint64_t addr)
{
    uint32_t off;
    uint8_t *dest = blob_room(t, &off);
    long len = read_guest_prefix(addr, dest, CN_MAX_BLOB_ITEM, true);
    /* no NUL within the cap: only the prefix is kept */
    uint64_t flags = CN_BLOB_STRING | (len == (long)CN_MAX_BLOB_ITEM ? CN_BLOB_TRUNCATED : 0);
    blob_commit(t, off, len, addr, nr, arg, 0, flags);
}

/* want bytes at addr (the call's length or the struct's size), at most the cap. */
static void record_buffer(struct cn_thread *t, int64_t nr, int arg, uint64_t item, uint64_t addr,
                          uint64_t want)
{
    uint32_t off;
    uint8_t *dest = blob_room(t, &off);
    size_t len = want < CN_MAX_BLOB_ITEM ? (size_t)want : CN_MAX_BLOB_ITEM;
    uint64_t flags = CN_BLOB_BUFFER | (want > len ? CN_BLOB_TRUNCATED : 0);
    blob_commit(t, off, len ? read_guest_prefix(addr, dest, len, false) : 0, addr, nr, arg, item, flags);
}

/* An iovec array: the array itself as item 0, then the data of element k as
 * item k + 1, budget bytes in all (a readv's return value; a writev's whole
 * length), at most CN_MAX_BLOB_ITEM of data over all elements. */
static void record_iovec(struct cn_thread *t, int64_t nr, int arg, uint64_t addr, uint64_t count,
                         unsigned elem_size, uint64_t budget)
{
    uint8_t iov[CN_MAX_BLOB_ITEM];
    uint64_t most = CN_MAX_BLOB_ITEM / elem_size;
    uint64_t n = count < most ? count : most;
    long got = n ? read_guest_prefix(addr, iov, (size_t)(n * elem_size), false) : 0;
    uint32_t off;
    uint8_t *dest = blob_room(t, &off);
    if (got > 0) {
        memcpy(dest, iov, (size_t)got);
    }
    blob_commit(t, off, got, addr, nr, arg, 0, CN_BLOB_BUFFER | (count > n ? CN_BLOB_TRUNCATED : 0));
    uint64_t room = CN_MAX_BLOB_ITEM;
    unsigned half = elem_size / 2; /* iov_base, then iov_len: guest words */
    for (uint64_t k = 0; got > 0 && k < (uint64_t)got / elem_size && budget && room; k++) {
        uint64_t base = 0, len = 0; /* little-endian guests: a 4-byte copy fills the low half */
        memcpy(&base, iov + k * elem_size, half);
        memcpy(&len, iov + k * elem_size + half, half);
        len = len < budget ? len : budget;
        budget -= len;
        uint64_t take = len < room ? len : room;
        room -= take;
        record_buffer(t, nr, arg, k + 1, base, take);
    }
}

/* Copy the buffers of call nr that the kernel reads at entry (at_return 0)
 * or has filled at its return (1, ret its result). */
static void record_buffers(struct cn_thread *t, int64_t nr, const uint64_t *args, bool at_return, int64_t ret)
{
    for (size_t i = 0; i < n_buffers; i++) {
        const struct buffer_arg *b = &buffers[i];
        if (b->nr != nr || b->at_return != at_return) {
            continue;
        }
        uint64_t addr = args[b->arg] & pointer_mask;
        if (!addr) {
            continue; /* NULL: nothing to copy, and strace prints NULL */
        }
        uint64_t len_value = b->len_arg >= 0 ? args[b->len_arg] & pointer_mask : 0;
        switch (b->len) {
        case CN_LEN_ARG:
            record_buffer(t, nr, b->arg, 0, addr, len_value);
            break;
        case CN_LEN_RET:
            record_buffer(t, nr, b->arg, 0, addr, (uint64_t)ret & pointer_mask);
            break;
        case CN_LEN_FIXED:
            record_buffer(t, nr, b->arg, 0, addr, b->size);
            break;
        case CN_LEN_IOV:
            record_iovec(t, nr, b->arg, addr, len_value, b->size, at_return ? (uint64_t)ret : UINT64_MAX);
            break;
        }
    }
}

static bool fills_buffers(int64_t nr)
{
    for (size_t i = 0; i < n_buffers; i++) {
        if (buffers[i].nr == nr && buffers[i].at_return) {
            return true;
        }
    }
    return false;
}

void vcpu_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1,
                  uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7,
                  uint64_t a8)
{
    (void)id, (void)vcpu_index, (void)a7, (void)a8;
    struct cn_thread *t = cn_thread_self();
    cn_inline_lock(t); /* the syscall's block and what led to it reach the lane first */
    /* a syscall instruction always ends its block: the block ran to its end */
    if (t->cur) {
        t->lane->cur_done = 1;
        t->lane->cur_accessed = t->cur->n_insns;
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
    record_buffers(t, num, args, false, 0);
    t->call_pending = fills_buffers(num);
    if (t->call_pending) {
        t->call_nr = num;
        memcpy(t->call_args, args, sizeof(args));
    }
    if (num == exec_calls[0] || num == exec_calls[1]) {
        cn_lane_hand_over(t);
    }
    cn_inline_unlock(t);
}

void vcpu_syscall_ret(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, int64_t ret)
{
    (void)id, (void)vcpu_index;
    struct cn_thread *t = cn_thread_self();
    cn_inline_lock(t);
    struct cn_event *ev = cn_event_new(t, CN_EV_SYSRET, t->exec_ord - 1);
    ev->v[0] = (uint64_t)num;
    ev->v[1] = (uint64_t)ret;
    cn_event_commit(t);
    if (t->call_pending && t->call_nr == num) {
        t->call_pending = false;
        if (ret >= 0 || ret < -4095) { /* -4095..-1: an error, the kernel filled nothing */
            record_buffers(t, num, t->call_args, true, ret);
        }
    }
    cn_inline_unlock(t);
}
