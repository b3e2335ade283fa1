/*
 * insn_counter.c -- an independent instruction counter for the tests.
 *
 * Shares no code with the Cannoli DB plugin: every instruction gets its own
 * execution callback that atomically bumps one counter, so it counts exactly
 * the instructions QEMU started, whatever a block's shape.  Slow, and exact.
 * Usage: qemu-x86_64 -plugin ./insn_counter.so,out=FILE ./app
 * At exit it writes the count (decimal) to FILE.  A forked child starts its
 * own count at 0 and writes it to FILE.<pid>.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct { const char *target_name; struct { int min; int cur; } version; bool system_emulation;
                 union { struct { int smp_vcpus; int max_vcpus; } system; }; } qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, struct qemu_plugin_tb *));
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *, void (*)(unsigned int, void *), int, void *);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, void *), void *);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);

/* The calls above are the same in plugin API 1 (QEMU 7.2) and 4 (QEMU 10);
 * only the version a QEMU accepts differs: build with -DCOUNTER_API=4 for 10. */
#ifndef COUNTER_API
#define COUNTER_API 1
#endif
__attribute__((visibility("default"))) int qemu_plugin_version = COUNTER_API;

static uint64_t count;
static char out_path[4096];

static void on_insn(unsigned int vcpu, void *udata)
{
    (void)vcpu, (void)udata;
    __atomic_add_fetch(&count, 1, __ATOMIC_RELAXED);
}

static void on_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    for (size_t i = 0; i < qemu_plugin_tb_n_insns(tb); i++) {
        qemu_plugin_register_vcpu_insn_exec_cb(qemu_plugin_tb_get_insn(tb, i), on_insn, 0, NULL);
    }
}

static void in_forked_child(void)
{
    __atomic_store_n(&count, 0, __ATOMIC_RELAXED);
    size_t len = strlen(out_path);
    snprintf(out_path + len, sizeof(out_path) - len, ".%d", (int)getpid());
}

static void on_exit(qemu_plugin_id_t id, void *udata)
{
    (void)id, (void)udata;
    FILE *f = fopen(out_path, "w");
    if (f) {
        fprintf(f, "%llu\n", (unsigned long long)__atomic_load_n(&count, __ATOMIC_RELAXED));
        fclose(f);
    }
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                               int argc, char **argv)
{
    (void)info;
    if (argc != 1 || strncmp(argv[0], "out=", 4) != 0) {
        fprintf(stderr, "insn_counter: usage: -plugin insn_counter.so,out=FILE\n");
        return -1;
    }
    snprintf(out_path, sizeof(out_path), "%s", argv[0] + 4);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_trans);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    pthread_atfork(NULL, NULL, in_forked_child);
    return 0;
}
