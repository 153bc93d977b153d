/* SPDX-License-Identifier: Apache-2.0 */
/*
 * smallstr.c - strspn and strcspn as plain loops, linked into agentd in
 * place of musl's, which build a 256-bit table of the set first (0.5 KB
 * of the agent).  The agent's sets are two or three whitespace
 * characters, so a strchr per byte is as quick.  Only agentd links this
 * file.
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
