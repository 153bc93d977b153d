/* SPDX-License-Identifier: Apache-2.0 */
/*
 * alloc.c - the agent's malloc, linked in place of musl's (which is about
 * 8.5 KB of the agent's 85).  The agent allocates little and simply: a
 * few big buffers (the port's input buffer, output and stdin queues, file
 * contents at boot) and small structs and per-frame arena blocks.  So:
 *
 *  - a small block (header included, up to SMALL_MAX) takes the
 *    power-of-two size class that fits it; classes are carved from 64 KiB
 *    chunks and a freed block waits on its class's free list for reuse.
 *    Small memory is never returned to the kernel: it stays at the peak
 *    the agent needed, which is bounded because every caller's count of
 *    sessions, streams and entries is;
 *  - a large block is a mapping of its own, unmapped by free, so a big
 *    buffer's memory goes back to the kernel as soon as it is released;
 *    realloc resizes it in place or moves it with mremap.
 *
 * Every block starts 16 bytes after its header, so blocks keep malloc's
 * 16-byte alignment.  The agent is single-threaded and its children only
 * exec or _exit, so there is no locking.  Only agentd links this file: the
 * sanitizer build keeps its own allocator, which checks the callers.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

enum {
	HDR = 16,             /* block header; keeps 16-byte alignment */
	MIN_SHIFT = 5,        /* smallest class: 32 bytes, header included */
	CLASSES = 11,         /* 32 B .. 32 KiB */
	CHUNK = 65536,        /* small classes are carved from chunks */
	PAGE = 4096,
};

#define SMALL_MAX ((size_t)1 << (MIN_SHIFT + CLASSES - 1))

/* Before each block: its size with the header (class size, or the length
 * of its own mapping when above SMALL_MAX), and a check word that says
 * whether the block is in use: free traps on a block freed twice or on a
 * pointer that malloc never returned (musl's allocator also stops there). */
struct header {
	size_t size;
	uintptr_t check;
};

static uintptr_t in_use(const struct header *h)
{
	return (uintptr_t)h ^ 0x5a6b7c8d9eaf1023u;
}

struct free_block {
	struct free_block *next;
};

/* The allocator's own state, as libc's malloc has its own. */
static struct {
	struct free_block *free[CLASSES];
	char *bump;   /* unused rest of the current chunk */
	size_t left;
} heap;

static void *block_of(struct header *h)
{
	h->check = in_use(h);
	return (char *)h + HDR;
}

/* The header of a block in use; traps on anything else. */
static struct header *header_of(void *p)
{
	struct header *h = (struct header *)((char *)p - HDR);

	if (h->check != in_use(h))
		__builtin_trap();
	return h;
}

static unsigned class_of(size_t size)
{
	unsigned c = 0;

	while (((size_t)1 << (MIN_SHIFT + c)) < size)
		c++;
	return c;
}

static void push_free(void *block, unsigned c)
{
	struct free_block *f = block;

	((struct header *)((char *)block - HDR))->check = 0;
	f->next = heap.free[c];
	heap.free[c] = f;
}

static struct header *header_of_free(struct free_block *f)
{
	return (struct header *)((char *)f - HDR);
}

/* The rest of a chunk becomes free blocks of the largest classes that
 * fit (chunks and classes are powers of two: nothing is lost). */
static void spill_rest(void)
{
	while (heap.left >= ((size_t)1 << MIN_SHIFT)) {
		unsigned c = class_of(heap.left);
		size_t size = (size_t)1 << (MIN_SHIFT + c);

		if (size > heap.left)
			size >>= 1, c--;
		((struct header *)heap.bump)->size = size;
		push_free(heap.bump + HDR, c);
		heap.bump += size;
		heap.left -= size;
	}
}

static void *small_alloc(unsigned c)
{
	size_t size = (size_t)1 << (MIN_SHIFT + c);
	struct header *h;
	void *chunk;

	if (heap.free[c]) {
		struct free_block *f = heap.free[c];

		heap.free[c] = f->next;
		return block_of(header_of_free(f));
	}
	if (heap.left < size) {
		chunk = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			     -1, 0);
		if (chunk == MAP_FAILED)
			return NULL;
		spill_rest();
		heap.bump = chunk;
		heap.left = CHUNK;
	}
	h = (struct header *)heap.bump;
	h->size = size;
	heap.bump += size;
	heap.left -= size;
	return block_of(h);
}

static void *large_alloc(size_t need)
{
	size_t len = (need + PAGE - 1) & ~(size_t)(PAGE - 1);
	struct header *h = mmap(NULL, len, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (h == MAP_FAILED)
		return NULL;
	h->size = len;
	return block_of(h);
}

/* n bytes; large blocks come zeroed from the kernel. */
static void *block_alloc(size_t n)
{
	if (n > SIZE_MAX / 2) {
		errno = ENOMEM;
		return NULL;
	}
	if (n + HDR > SMALL_MAX)
		return large_alloc(n + HDR);
	return small_alloc(class_of(n + HDR));
}

void *malloc(size_t n)
{
	return block_alloc(n);
}

void *calloc(size_t count, size_t size)
{
	size_t n;
	void *p;

	if (size && count > SIZE_MAX / size) {
		errno = ENOMEM;
		return NULL;
	}
	n = count * size;
	p = block_alloc(n);
	if (p && n + HDR <= SMALL_MAX)
		memset(p, 0, n);
	return p;
}

void free(void *p)
{
	struct header *h;

	if (!p)
		return;
	h = header_of(p);
	h->check = 0;
	if (h->size > SMALL_MAX)
		munmap(h, h->size);
	else
		push_free(p, class_of(h->size));
}

void *realloc(void *p, size_t n)
{
	struct header *h;
	size_t have, len;
	void *q;

	if (!p)
		return block_alloc(n);
	if (n > SIZE_MAX / 2) {
		errno = ENOMEM;
		return NULL;
	}
	h = header_of(p);
	have = h->size - HDR;
	if (h->size <= SMALL_MAX && n + HDR <= h->size)
		return p;  /* still fits its class */
	if (h->size > SMALL_MAX && n + HDR > SMALL_MAX) {
		len = (n + HDR + PAGE - 1) & ~(size_t)(PAGE - 1);
		h = mremap(h, h->size, len, MREMAP_MAYMOVE);
		if (h == MAP_FAILED)
			return NULL;
		h->size = len;
		return block_of(h);
	}
	q = block_alloc(n);
	if (!q)
		return NULL;
	memcpy(q, p, n < have ? n : have);
	free(p);
	return q;
}
