#ifndef HASHMAP_H
#define HASHMAP_H
#include <stddef.h>

/* String -> long map with open addressing; keys are copied. */
typedef struct hashmap hashmap;

hashmap *hm_new(void);
int hm_put(hashmap *m, const char *key, long value);
int hm_get(const hashmap *m, const char *key, long *value);
size_t hm_size(const hashmap *m);
void hm_free(hashmap *m);
#endif
