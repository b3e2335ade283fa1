/* debuggee.c -- a program to debug a recording of, for the gdbserver tests.
 *
 * - a call chain main -> outer -> middle -> leaf, each noinline;
 * - the global `watched` is stored twice: FIRST_VALUE in set_first (called
 *   by outer before middle), SECOND_VALUE in set_second (called by middle
 *   after leaf);
 * - leaf's argument and address are printed, values the guest computed;
 * - WORKERS threads start and wait at a barrier; while all of them are alive
 *   main calls all_threads_alive(); every thread's gettid() is printed.
 */
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FIRST_VALUE 0x1234abcdL
#define SECOND_VALUE 0x5678ef01L
#define WORKERS 2

volatile long watched;
static pthread_barrier_t all_here;
static long worker_tid[WORKERS];

__attribute__((noinline)) long leaf(long x)
{
    __asm__ volatile("" ::: "memory");
    return x * 3 + 1;
}

__attribute__((noinline)) void set_first(void)
{
    watched = FIRST_VALUE;
}

__attribute__((noinline)) void set_second(void)
{
    watched = SECOND_VALUE;
}

__attribute__((noinline)) long middle(long x)
{
    long r = leaf(x + 1);
    set_second();
    return r + 1;
}

__attribute__((noinline)) long outer(long x)
{
    set_first();
    return middle(x * 2) + 1;
}

__attribute__((noinline)) void all_threads_alive(void)
{
    __asm__ volatile("" ::: "memory");
}

static void *worker(void *arg)
{
    worker_tid[(long)arg] = syscall(SYS_gettid);
    pthread_barrier_wait(&all_here); /* every worker has its tid stored */
    pthread_barrier_wait(&all_here); /* main has called all_threads_alive */
    return NULL;
}

int main(void)
{
    long result = outer(20);
    printf("leaf_arg=%ld\n", 20L * 2 + 1);
    printf("leaf=%p\n", (void *)&leaf);
    printf("result=%ld watched=%#lx\n", result, watched);
    pthread_t t[WORKERS];
    pthread_barrier_init(&all_here, NULL, WORKERS + 1);
    for (long i = 0; i < WORKERS; i++) {
        pthread_create(&t[i], NULL, worker, (void *)i);
    }
    pthread_barrier_wait(&all_here);
    all_threads_alive();
    pthread_barrier_wait(&all_here);
    for (long i = 0; i < WORKERS; i++) {
        pthread_join(t[i], NULL);
    }
    printf("main_tid=%ld\n", (long)syscall(SYS_gettid));
    for (long i = 0; i < WORKERS; i++) {
        printf("worker_tid=%ld\n", worker_tid[i]);
    }
    return 0;
}
