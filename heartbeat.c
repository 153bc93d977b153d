/* SPDX-License-Identifier: Apache-2.0 */
/*
 * heartbeat.c - the heartbeat file on the runtime share (SPEC 8).
 *
 * The runtime directory is writable by guest processes, so the agent must
 * not follow anything planted there: the temporary file is unlinked and
 * created afresh (O_EXCL|O_NOFOLLOW, never through a symlink or into a
 * hard link to some other file), then renamed over heartbeat.json (rename
 * replaces a planted symlink itself, not its target).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

size_t heartbeat_format_time(char *buf, size_t n, const struct timespec *ts)
{
	char frac[12] = "";
	struct tm tm;
	time_t t = ts->tv_sec;
	unsigned ns = ts->tv_nsec > 0 && ts->tv_nsec < 1000000000 ? ts->tv_nsec : 0;
	int len;

	if (!n)
		return 0;
	if (!gmtime_r(&t, &tm)) {
		buf[0] = 0;
		return 0;
	}
	if (ns == 0)
		frac[0] = 0;
	else if (ns % 1000000 == 0)
		snprintf(frac, sizeof(frac), ".%03u", ns / 1000000);
	else if (ns % 1000 == 0)
		snprintf(frac, sizeof(frac), ".%06u", ns / 1000);
	else
		snprintf(frac, sizeof(frac), ".%09u", ns);
	len = snprintf(buf, n, "%04d-%02d-%02dT%02d:%02d:%02d%sZ",
		       tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
		       tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
	if (len < 0)
		return 0;
	return (size_t)len < n ? (size_t)len : n - 1;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= w;
	}
	return 0;
}

int heartbeat_write(struct agent *a)
{
	char now_s[48], last_s[48], doc[256], tmp[4096], dst[4096];
	struct timespec now;
	struct stat st;
	int fd, len;

	if (stat(a->runtime_dir, &st) < 0 || !S_ISDIR(st.st_mode))
		return 0;
	clock_gettime(CLOCK_REALTIME, &now);
	heartbeat_format_time(now_s, sizeof(now_s), &now);
	heartbeat_format_time(last_s, sizeof(last_s), &a->last_activity);
	len = snprintf(doc, sizeof(doc),
		       "{\n  \"timestamp\": \"%s\",\n  \"active_sessions\": %u,\n"
		       "  \"last_activity\": \"%s\"\n}",
		       now_s, a->nsessions, last_s);
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s/heartbeat.tmp", a->runtime_dir) >= sizeof(tmp) ||
	    (size_t)snprintf(dst, sizeof(dst), "%s/heartbeat.json", a->runtime_dir) >= sizeof(dst))
		return -1;
	if (unlink(tmp) < 0 && errno != ENOENT)
		return -1;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_EXCL | O_NOFOLLOW |
		  O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	if (write_all(fd, doc, len) < 0) {
		close(fd);
		unlink(tmp);
		return -1;
	}
	close(fd);
	if (rename(tmp, dst) < 0) {
		unlink(tmp);
		return -1;
	}
	return 0;
}
