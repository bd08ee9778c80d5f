#ifndef FIB_H
#define FIB_H
#include <stdint.h>

/* fib(0) == 0, fib(1) == 1; exact up to fib(93). */
uint64_t fib(unsigned n);
#endif
