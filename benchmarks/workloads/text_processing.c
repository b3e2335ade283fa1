/* text_processing: build a text buffer from a fixed word list, tokenize it,
 * count word frequencies in an open-addressing hash table, make an uppercase
 * copy and run strstr searches.
 * Usage: text_processing [scale]   (default 1; work grows linearly with scale)
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const WORDS[] = {
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog",
    "record", "replay", "trace", "database", "memory", "access", "block",
    "syscall", "thread", "emulator", "plugin", "chunk", "compress", "query",
    "instruction", "register", "pointer", "buffer", "kernel", "signal",
    "process", "binary", "symbol", "section", "loader", "stack", "heap",
    "cannoli", "ricotta", "pastry", "sicily", "dessert", "flour", "sugar",
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
    "iota", "kappa", "lambda", "omicron", "sigma", "upsilon", "omega",
};
#define NWORDS (sizeof WORDS / sizeof WORDS[0])

#define TEXT_WORDS 150000u
#define ROUNDS 55u
#define TABLE_SIZE 1024u /* power of two, > NWORDS */

struct slot {
    const char *word; /* points into the text buffer; NULL = empty */
    size_t len;
    uint32_t count;
};

static uint32_t hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

static void count_word(struct slot *table, const char *w, size_t n)
{
    uint32_t i = hash(w, n) & (TABLE_SIZE - 1);
    for (;;) {
        struct slot *s = &table[i];
        if (!s->word) {
            s->word = w;
            s->len = n;
            s->count = 1;
            return;
        }
        if (s->len == n && memcmp(s->word, w, n) == 0) {
            s->count++;
            return;
        }
        i = (i + 1) & (TABLE_SIZE - 1);
    }
}

int main(int argc, char **argv)
{
    unsigned scale = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 1u;
    if (scale == 0)
        scale = 1;
    size_t cap = (size_t)TEXT_WORDS * 16u + 1u;
    char *text = malloc(cap);
    char *upper = malloc(cap);
    char *work = malloc(cap);
    struct slot *table = malloc(TABLE_SIZE * sizeof *table);
    if (!text || !upper || !work || !table)
        return 1;
    uint64_t checksum = 0;
    uint32_t state = 2024u;

    for (unsigned r = 0; r < ROUNDS * scale; r++) {
        /* build the text */
        size_t pos = 0;
        for (unsigned i = 0; i < TEXT_WORDS; i++) {
            state = state * 1103515245u + 12345u;
            const char *w = WORDS[(state >> 8) % NWORDS];
            size_t n = strlen(w);
            memcpy(text + pos, w, n);
            pos += n;
            text[pos++] = (i % 17 == 16) ? '\n' : ((i % 5 == 4) ? ',' : ' ');
        }
        text[pos] = '\0';

        /* tokenize and count */
        memset(table, 0, TABLE_SIZE * sizeof *table);
        memcpy(work, text, pos + 1);
        unsigned tokens = 0;
        for (char *save = NULL, *t = strtok_r(work, " ,\n", &save); t;
             t = strtok_r(NULL, " ,\n", &save)) {
            count_word(table, t, strlen(t));
            tokens++;
        }
        for (unsigned i = 0; i < TABLE_SIZE; i++)
            if (table[i].word)
                checksum = checksum * 131u + table[i].count * (uint64_t)table[i].len;
        checksum += tokens;

        /* uppercase copy */
        for (size_t i = 0; i <= pos; i++)
            upper[i] = (char)toupper((unsigned char)text[i]);
        checksum += hash(upper, pos);

        /* strstr searches */
        static const char *const needles[] = {
            "CANNOLI RICOTTA", "TRACE DATABASE", "QUICK BROWN FOX",
            "OMEGA ALPHA", "KERNEL SIGNAL", "NOT PRESENT AT ALL",
        };
        for (unsigned k = 0; k < sizeof needles / sizeof needles[0]; k++) {
            unsigned hits = 0;
            for (const char *p = upper; (p = strstr(p, needles[k])); p++)
                hits++;
            checksum = checksum * 7u + hits;
        }
    }
    printf("text_processing checksum %llu\n", (unsigned long long)checksum);
    free(text);
    free(upper);
    free(work);
    free(table);
    return 0;
}
