/* Multi-threaded guest: N threads (argv[1], default 4) hammer memory.  Each
 * thread adds 1 to its own slot and, with an atomic, to a shared counter,
 * ITER times (argv[2], default 200000), and stores its index to a global
 * per-thread marker.  Exits 0 if the shared counter is exact. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_THREADS 64

static long iterations;
volatile uint64_t shared_counter;
volatile uint64_t slots[MAX_THREADS][8];
volatile uint64_t thread_marker[MAX_THREADS];
volatile long worker_tid[MAX_THREADS];

static void *worker(void *arg)
{
    long me = (long)arg;
    thread_marker[me] = 0xABCD0000u + (uint64_t)me;
    worker_tid[me] = syscall(SYS_gettid);
    for (long i = 0; i < iterations; i++) {
        slots[me][0] += 1;
        __atomic_add_fetch(&shared_counter, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 4;
    iterations = argc > 2 ? atol(argv[2]) : 200000;
    if (n < 1 || n > MAX_THREADS) {
        return 2;
    }
    pthread_t t[MAX_THREADS];
    for (long i = 0; i < n; i++) {
        pthread_create(&t[i], NULL, worker, (void *)i);
    }
    for (long i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
    }
    printf("shared=%llu\n", (unsigned long long)shared_counter);
    printf("main_tid=%ld\n", (long)syscall(SYS_gettid));
    for (long i = 0; i < n; i++) {
        printf("worker_tid=%ld\n", worker_tid[i]);
    }
    return shared_counter == (uint64_t)(n * iterations) ? 0 : 1;
}
