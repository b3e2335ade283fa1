/* struct_churn: linked lists and arrays of malloc'ed structs updated in
 * loops, memcpy/memset of buffers, and a small matrix multiply.
 * Usage: struct_churn [scale]   (default 1; work grows linearly with scale)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct node {
    struct node *next;
    uint64_t id;
    double weight;
    uint32_t hits;
    char tag[20];
};

struct particle {
    double x, y, z;
    double vx, vy, vz;
    uint32_t flags;
};

#define ROUNDS 200u
#define LIST_LEN 20000u
#define LIST_PASSES 12u
#define NPART 8192u
#define STEPS 30u
#define BUF_SIZE (256u * 1024u)
#define BUF_ROUNDS 40u
#define MAT 64u
#define MAT_ROUNDS 6u

int main(int argc, char **argv)
{
    unsigned scale = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 1u;
    if (scale == 0)
        scale = 1;
    uint64_t checksum = 0;
    uint32_t state = 777u;

    for (unsigned r = 0; r < ROUNDS * scale; r++) {
        /* linked list of malloc'ed nodes, pushed at the head */
        struct node *head = NULL;
        for (unsigned i = 0; i < LIST_LEN; i++) {
            struct node *n = malloc(sizeof *n);
            if (!n)
                return 1;
            state = state * 1664525u + 1013904223u;
            n->id = i;
            n->weight = (double)(state >> 8) / 16777216.0;
            n->hits = 0;
            snprintf(n->tag, sizeof n->tag, "node-%u", i);
            n->next = head;
            head = n;
        }
        for (unsigned p = 0; p < LIST_PASSES; p++)
            for (struct node *n = head; n; n = n->next) {
                n->hits += (uint32_t)(n->id % (p + 2));
                n->weight = n->weight * 0.999 + 0.001 * p;
                n->tag[p % 8 + 5] ^= (char)p;
            }
        /* unlink every third node, then free the rest */
        struct node **pp = &head;
        unsigned idx = 0;
        while (*pp) {
            struct node *n = *pp;
            if (idx++ % 3 == 0) {
                checksum += n->hits + (uint64_t)(n->weight * 1000.0);
                *pp = n->next;
                free(n);
            } else {
                pp = &n->next;
            }
        }
        while (head) {
            struct node *n = head;
            head = n->next;
            checksum += n->hits + (unsigned char)n->tag[6];
            free(n);
        }

        /* array of structs updated in a loop */
        struct particle *ps = malloc(NPART * sizeof *ps);
        if (!ps)
            return 1;
        for (unsigned i = 0; i < NPART; i++) {
            ps[i].x = i * 0.5;
            ps[i].y = i * 0.25;
            ps[i].z = 0;
            ps[i].vx = 1.0 / (i + 1);
            ps[i].vy = 0.5;
            ps[i].vz = -0.25;
            ps[i].flags = 0;
        }
        for (unsigned s = 0; s < STEPS; s++)
            for (unsigned i = 0; i < NPART; i++) {
                struct particle *q = &ps[i];
                q->x += q->vx * 0.01;
                q->y += q->vy * 0.01;
                q->z += q->vz * 0.01;
                if (q->z < -1.0) {
                    q->vz = -q->vz;
                    q->flags++;
                }
                q->vy -= 0.001;
            }
        double psum = 0;
        for (unsigned i = 0; i < NPART; i++)
            psum += ps[i].x + ps[i].y + ps[i].z + ps[i].flags;
        checksum += (uint64_t)psum;
        free(ps);

        /* memcpy / memset of buffers */
        unsigned char *a = malloc(BUF_SIZE), *b = malloc(BUF_SIZE);
        if (!a || !b)
            return 1;
        memset(a, 0x5a, BUF_SIZE);
        for (unsigned k = 0; k < BUF_ROUNDS; k++) {
            memset(a + (k * 4096u) % BUF_SIZE, (int)k, 4096);
            memcpy(b, a, BUF_SIZE);
            memmove(a + 1, b, BUF_SIZE - 1);
            checksum += b[(k * 7919u) % BUF_SIZE] + a[(k * 104729u) % BUF_SIZE];
        }
        free(a);
        free(b);

        /* small matrix multiply */
        double *ma = malloc(MAT * MAT * sizeof(double));
        double *mb = malloc(MAT * MAT * sizeof(double));
        double *mc = malloc(MAT * MAT * sizeof(double));
        if (!ma || !mb || !mc)
            return 1;
        for (unsigned i = 0; i < MAT * MAT; i++) {
            ma[i] = (double)(i % 13) * 0.5;
            mb[i] = (double)(i % 7) * 0.25;
        }
        for (unsigned m = 0; m < MAT_ROUNDS; m++) {
            memset(mc, 0, MAT * MAT * sizeof(double));
            for (unsigned i = 0; i < MAT; i++)
                for (unsigned k = 0; k < MAT; k++) {
                    double aik = ma[i * MAT + k];
                    for (unsigned j = 0; j < MAT; j++)
                        mc[i * MAT + j] += aik * mb[k * MAT + j];
                }
            memcpy(ma, mc, MAT * MAT * sizeof(double));
            for (unsigned i = 0; i < MAT * MAT; i++)
                ma[i] *= 1e-3;
        }
        double tr = 0;
        for (unsigned i = 0; i < MAT; i++)
            tr += mc[i * MAT + i];
        checksum += (uint64_t)(tr * 1e6);
        free(ma);
        free(mb);
        free(mc);
    }
    printf("struct_churn checksum %llu\n", (unsigned long long)checksum);
    return 0;
}
