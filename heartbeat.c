/* SPDX-License-Identifier: Apache-2.0 */
/*
 * heartbeat.c - the heartbeat file on the runtime share (SPEC 8).
 *
 * The runtime directory is writable by guest processes, so the agent must
 * not follow anything planted there: the temporary file is unlinked and
 * created afresh (O_EXCL|O_NOFOLLOW, never through a symlink or into a
 * hard link to some other file), then renamed over heartbeat.json (rename
 * replaces a planted symlink itself, not its target).
 *
 * The runtime directory is a virtiofs share whose daemon lives on the
 * host and can stall, so the file is written by a child (issue 14); a new
 * heartbeat is skipped while the last one's child still runs.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "fmt.h"

/* Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
 * civil_from_days); spares the agent gmtime and its time zone code. */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
	int64_t era;
	unsigned doe, yoe, doy, mp;

	z += 719468;
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = (unsigned)(z - era * 146097);
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*d = doy - (153 * mp + 2) / 5 + 1;
	*m = mp < 10 ? mp + 3 : mp - 9;
	*y = (int64_t)yoe + era * 400 + (*m <= 2);
}

size_t heartbeat_format_time(char *buf, size_t n, const struct timespec *ts)
{
	char frac[12] = "";
	int64_t t = ts->tv_sec, days = t / 86400, secs = t % 86400, year;
	unsigned ns = ts->tv_nsec > 0 && ts->tv_nsec < 1000000000 ? ts->tv_nsec : 0;
	unsigned mon, mday;
	int len;

	if (!n)
		return 0;
	if (secs < 0) {
		secs += 86400;
		days--;
	}
	civil_from_days(days, &year, &mon, &mday);
	if (ns % 1000000 == 0 && ns)
		fmt(frac, sizeof(frac), ".%03u", ns / 1000000);
	else if (ns % 1000 == 0 && ns)
		fmt(frac, sizeof(frac), ".%06u", ns / 1000);
	else if (ns)
		fmt(frac, sizeof(frac), ".%09u", ns);
	len = fmt(buf, n, "%04lld-%02u-%02uT%02u:%02u:%02u%sZ",
		       (long long)year, mon, mday, (unsigned)(secs / 3600),
		       (unsigned)(secs / 60 % 60), (unsigned)(secs % 60), frac);
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

static int heartbeat_file(struct agent *a)
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
	len = fmt(doc, sizeof(doc),
		       "{\n  \"timestamp\": \"%s\",\n  \"active_sessions\": %u,\n"
		       "  \"last_activity\": \"%s\"\n}",
		       now_s, a->nsessions, last_s);
	if ((size_t)fmt(tmp, sizeof(tmp), "%s/heartbeat.tmp", a->runtime_dir) >= sizeof(tmp) ||
	    (size_t)fmt(dst, sizeof(dst), "%s/heartbeat.json", a->runtime_dir) >= sizeof(dst))
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

void heartbeat_write(struct agent *a)
{
	int pid;

	if (a->hb_pid > 0)
		return;
	pid = _Fork();
	if (pid == 0) {
		/* Hold nothing of the agent's (a session's stdin pipe, the
		 * port) while a hung share keeps us here. */
		syscall(SYS_close_range, 3, ~0u, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		_exit(heartbeat_file(a) < 0);
	}
	if (pid > 0)
		a->hb_pid = pid;
}

void heartbeat_reaped(struct agent *a, int pid)
{
	if (pid == a->hb_pid)
		a->hb_pid = 0;
}
