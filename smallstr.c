/* SPDX-License-Identifier: Apache-2.0 */
/*
 * smallstr.c - strspn and strcspn as plain loops, linked into agentd in
 * place of musl's, which build a 256-bit table of the set first (0.5 KB
 * of the agent).  The agent's sets are two or three whitespace
 * characters, so a strchr per byte is as quick.  memmem likewise: musl's
 * two-way search is 1.2 KB, and every needle the agent looks for is a
 * short constant (".ko", the ::1 line of if_inet6, the profile markers),
 * so the plain search is linear in the haystack.  Only agentd links this
 * file; nothing may call memmem with a long needle (init.c's CA check
 * compares the bundle's tail instead).
 */
#include <string.h>

size_t strspn(const char *s, const char *set)
{
	size_t n = 0;

	while (s[n] && strchr(set, s[n]))
		n++;
	return n;
}

size_t strcspn(const char *s, const char *set)
{
	size_t n = 0;

	while (s[n] && !strchr(set, s[n]))
		n++;
	return n;
}

void *memmem(const void *hay, size_t n, const void *needle, size_t m)
{
	const char *h = hay;
	size_t i;

	for (i = 0; m <= n && i <= n - m; i++)
		if (!memcmp(h + i, needle, m))
			return (void *)(h + i);
	return NULL;
}

/* The rest as byte loops: musl's word-at-a-time versions are 0.4 KB and
 * the agent's strings are paths, names and short messages.  NOPATTERN:
 * GCC may otherwise recognise a loop as the very function it implements
 * and call it (12.2 does not yet, a later one may). */
#define NOPATTERN __attribute__((optimize("no-tree-loop-distribute-patterns")))

NOPATTERN size_t strlen(const char *s)
{
	const char *e = s;

	while (*e)
		e++;
	return (size_t)(e - s);
}

NOPATTERN void *memchr(const void *p, int c, size_t n)
{
	const unsigned char *s = p;

	for (; n; n--, s++)
		if (*s == (unsigned char)c)
			return (void *)s;
	return NULL;
}

NOPATTERN char *strcpy(char *d, const char *s)
{
	char *r = d;

	while ((*d++ = *s++))
		;
	return r;
}
