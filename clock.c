/* SPDX-License-Identifier: Apache-2.0 */
/*
 * clock.c - clock_gettime as the plain system call, linked in place of
 * musl's: musl's finds and calls the vDSO's (about 1 KB of lookup code in
 * the agent).  The agent reads the clock a few times per frame or chunk,
 * next to the read and write calls that move it, so the extra system call
 * is not what a round trip costs.  Only agentd links this file.
 */
#include <errno.h>
#include <time.h>

#include "rawsys.h"

int clock_gettime(clockid_t id, struct timespec *ts)
{
	long r = raw2(SYS_clock_gettime, id, (long)ts);

	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return 0;
}
