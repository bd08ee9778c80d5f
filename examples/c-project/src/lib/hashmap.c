#include <stdlib.h>
#include <string.h>
#include "hash.h"
#include "hashmap.h"

struct entry { char *key; long value; };
struct hashmap { struct entry *slots; size_t cap, size; };

hashmap *hm_new(void) {
    hashmap *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->cap = 16;
    m->slots = calloc(m->cap, sizeof *m->slots);
    if (!m->slots) { free(m); return NULL; }
    return m;
}

static struct entry *find(const hashmap *m, const char *key) {
    size_t i = fnv1a64(key, strlen(key)) & (m->cap - 1);
    while (m->slots[i].key && strcmp(m->slots[i].key, key) != 0) i = (i + 1) & (m->cap - 1);
    return &m->slots[i];
}

static int grow(hashmap *m) {
    hashmap bigger = { calloc(m->cap * 2, sizeof *m->slots), m->cap * 2, m->size };
    if (!bigger.slots) return -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key) *find(&bigger, m->slots[i].key) = m->slots[i];
    free(m->slots);
    *m = bigger;
    return 0;
}

int hm_put(hashmap *m, const char *key, long value) {
    if ((m->size + 1) * 4 > m->cap * 3 && grow(m)) return -1; /* keep the load under 3/4 */
    struct entry *e = find(m, key);
    if (!e->key) {
        if (!(e->key = strdup(key))) return -1;
        m->size++;
    }
    e->value = value;
    return 0;
}

int hm_get(const hashmap *m, const char *key, long *value) {
    const struct entry *e = find(m, key);
    if (!e->key) return 0;
    if (value) *value = e->value;
    return 1;
}

size_t hm_size(const hashmap *m) { return m->size; }

void hm_free(hashmap *m) {
    if (!m) return;
    for (size_t i = 0; i < m->cap; i++) free(m->slots[i].key);
    free(m->slots);
    free(m);
}
