/* SPDX-License-Identifier: Apache-2.0 */
/*
 * alloc_stress - checks alloc.c (the agent's malloc) against a model:
 * random malloc / calloc / realloc / free of sizes from 0 bytes to 6 MiB,
 * each block filled with a pattern of its own and checked before it is
 * resized or freed, alignment 16, calloc zeroed (also on reused blocks),
 * failures with ENOMEM for impossible sizes.  Argument "double-free" or
 * "bad-free": do that instead; the allocator must trap (the test expects
 * the process killed by a signal).  Prints "ok" on success.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 256

static struct { unsigned char *p; size_t n; unsigned char tag; } slot[SLOTS];
static uint64_t rng = 0x9e3779b97f4a7c15u;

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static size_t random_size(void)
{
	switch (next() % 8) {
	case 0: return next() % 17;
	case 1: case 2: case 3: return next() % 600;
	case 4: case 5: return next() % 40000;          /* around the class limit */
	case 6: return 30000 + next() % 8000;
	default: return next() % (6u << 20);           /* large: own mappings */
	}
}

static void fail(const char *what, int i)
{
	printf("FAIL %s (slot %d, size %zu)\n", what, i, slot[i].n);
	exit(1);
}

static void fill(int i)
{
	for (size_t k = 0; k < slot[i].n; k += 97)
		slot[i].p[k] = (unsigned char)(slot[i].tag + k);
	if (slot[i].n)
		slot[i].p[slot[i].n - 1] = slot[i].tag;
}

static void check(int i, size_t upto)
{
	if (upto > slot[i].n)
		upto = slot[i].n;
	for (size_t k = 0; k < upto; k += 97)
		if (k != slot[i].n - 1 && slot[i].p[k] != (unsigned char)(slot[i].tag + k))
			fail("content lost", i);
	if (upto == slot[i].n && upto && slot[i].p[upto - 1] != slot[i].tag)
		fail("last byte lost", i);
}

static void step(void)
{
	int i = (int)(next() % SLOTS);
	size_t n = random_size();
	unsigned char *q;

	if (slot[i].p && next() % 3 == 0) {
		check(i, slot[i].n);
		q = realloc(slot[i].p, n);
		if (!q)
			fail("realloc", i);
		slot[i].p = q;
		check(i, n < slot[i].n ? n : slot[i].n);
		slot[i].n = n;
		slot[i].tag = (unsigned char)next();
	} else if (slot[i].p) {
		check(i, slot[i].n);
		free(slot[i].p);
		slot[i].p = NULL;
		return;
	} else if (next() % 2) {
		slot[i].p = calloc(1, n);
		slot[i].n = n;
		for (size_t k = 0; slot[i].p && k < n; k += k < 4096 ? 1 : 61)
			if (slot[i].p[k])
				fail("calloc not zeroed", i);
	} else {
		slot[i].p = malloc(n);
		slot[i].n = n;
	}
	if (!slot[i].p)
		fail("allocation", i);
	if ((uintptr_t)slot[i].p % 16)
		fail("alignment", i);
	slot[i].tag = (unsigned char)next();
	fill(i);
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "double-free")) {
		void *p = malloc(100);

		free(p);
		free(p);
		return 0;
	}
	if (argc > 1 && !strcmp(argv[1], "bad-free")) {
		char *p = malloc(100);

		free(p + 32);
		return 0;
	}
	for (int k = 0; k < 8000; k++)
		step();
	for (int i = 0; i < SLOTS; i++) {
		if (slot[i].p)
			check(i, slot[i].n);
		free(slot[i].p);
	}
	errno = 0;
	if (malloc(SIZE_MAX - 8) || errno != ENOMEM || calloc(SIZE_MAX / 2, 4) ||
	    realloc(malloc(1), SIZE_MAX - 8))
		fail("impossible sizes", 0);
	free(NULL);
	puts("ok");
	return 0;
}
