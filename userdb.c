/* SPDX-License-Identifier: Apache-2.0 */
/*
 * userdb.c - look users and groups up in /etc/passwd and /etc/group.
 *
 * musl's getpwnam and friends pull in stdio, nscd client code and a line
 * reader that grows without bound: 7 KB of a static agent and an
 * allocation the size of the longest line.  A guest's files are plain
 * text, so this reads them line by line through a fixed buffer; a line
 * longer than the buffer is skipped, as no valid entry is that long.
 * These files belong to the guest: the agent looks them up in the child
 * of an exec, never on its loop (a hung /etc stalls that exec only).  That
 * child shares the agent's memory, so only raw system calls (rawsys.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rawsys.h"
#include "userdb.h"

#define LINE_MAX_LEN   1024
#define FILE_MAX_BYTES (4u * 1024 * 1024)  /* the rest of a file is not read */

struct lines {
	int fd;
	bool skipping;  /* inside a line longer than buf */
	size_t len;     /* bytes in buf */
	size_t pos;     /* start of the next line */
	size_t total;   /* bytes read from the file */
	char buf[LINE_MAX_LEN];
};

/*
 * Only a regular file: a guest can put a FIFO or a device at these paths,
 * and opening those could block or read forever.  O_NONBLOCK makes the
 * open of a FIFO return at once (then refused).
 */
static int lines_open(struct lines *l, const char *path)
{
	struct stat st;

	memset(l, 0, offsetof(struct lines, buf));
	l->fd = (int)raw4(SYS_openat, AT_FDCWD, (long)path,
			  O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0);
	if (l->fd < 0)
		return -1;
	if (raw2(SYS_fstat, l->fd, (long)&st) < 0 || !S_ISREG(st.st_mode)) {
		raw1(SYS_close, l->fd);
		return -1;
	}
	return 0;
}

static ssize_t lines_read(struct lines *l)
{
	size_t want = sizeof(l->buf) - l->len;
	ssize_t n;

	if (want > FILE_MAX_BYTES - l->total)
		want = FILE_MAX_BYTES - l->total;
	if (!want)
		return 0;
	do
		n = raw3(SYS_read, l->fd, (long)(l->buf + l->len), (long)want);
	while (n == -EINTR);
	if (n > 0)
		l->total += (size_t)n;
	return n;
}

/*
 * The next complete line with its '\n' replaced by NUL, or NULL at EOF.
 * A line longer than the buffer is skipped whole: a piece of it parsed as
 * a line of its own could name another user or group.
 */
static char *next_line(struct lines *l)
{
	for (;;) {
		char *nl = memchr(l->buf + l->pos, '\n', l->len - l->pos);
		ssize_t n;

		if (nl) {
			char *line = l->buf + l->pos;

			*nl = 0;
			l->pos = (size_t)(nl - l->buf) + 1;
			if (!l->skipping)
				return line;
			l->skipping = false;
			continue;
		}
		if (l->pos == 0 && l->len == sizeof(l->buf)) {
			l->len = 0;      /* overlong line: drop it to its end */
			l->skipping = true;
		} else {
			memmove(l->buf, l->buf + l->pos, l->len - l->pos);
			l->len -= l->pos;
		}
		l->pos = 0;
		n = lines_read(l);
		if (n <= 0) {
			if (l->len == 0 || l->skipping)
				return NULL;
			l->buf[l->len++] = '\n';  /* last line without newline */
			continue;
		}
		l->len += (size_t)n;
	}
}

/* Split line at ':' into at most max fields; returns the count. */
static int split(char *line, char **field, int max)
{
	int n = 0;

	field[n++] = line;
	for (char *p = line; *p && n < max; p++)
		if (*p == ':') {
			*p = 0;
			field[n++] = p + 1;
		}
	return n;
}

bool userdb_parse_id(const char *s, uint32_t *out)
{
	uint64_t v = 0;

	if (*s == '+')
		s++;
	if (!*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
		if (v > UINT32_MAX)
			return false;
	}
	*out = (uint32_t)v;
	return true;
}

static bool copy_field(char *dst, size_t n, const char *src)
{
	size_t len = strlen(src);

	if (len >= n)
		return false;
	memcpy(dst, src, len + 1);
	return true;
}

/* Scan /etc/passwd for an entry with this name (name != NULL) or uid. */
static int find_user(const char *path, const char *name, uint32_t uid,
		     struct user_entry *u)
{
	struct lines l;
	char *line, *f[7];
	int found = -1;

	if (lines_open(&l, path) < 0)
		return -1;
	while (found < 0 && (line = next_line(&l))) {
		uint32_t id, gid;

		if (split(line, f, 7) < 7 || !userdb_parse_id(f[2], &id) ||
		    !userdb_parse_id(f[3], &gid))
			continue;
		if (name ? strcmp(f[0], name) != 0 : id != uid)
			continue;
		if (!copy_field(u->name, sizeof(u->name), f[0]) ||
		    !copy_field(u->home, sizeof(u->home), f[5]))
			continue;
		u->uid = id;
		u->gid = gid;
		found = 0;
	}
	raw1(SYS_close, l.fd);
	return found;
}

int userdb_user_by_name(const char *passwd, const char *name,
			struct user_entry *u)
{
	return find_user(passwd, name, 0, u);
}

int userdb_user_by_uid(const char *passwd, uint32_t uid, struct user_entry *u)
{
	return find_user(passwd, NULL, uid, u);
}

static bool is_member(char *members, const char *user)
{
	for (char *m = members; m && *m;) {
		char *comma = strchr(m, ',');

		if (comma)
			*comma = 0;
		if (!strcmp(m, user))
			return true;
		m = comma ? comma + 1 : NULL;
	}
	return false;
}

/*
 * With name: the gid of group name (return 0 found, -1 not).  With user:
 * fill groups[] with base followed by every group listing user as a
 * member, like getgrouplist; returns the count (at most max).
 */
static int scan_groups(const char *path, const char *name, uint32_t *gid,
		       const char *user, uint32_t *groups, int max)
{
	struct lines l;
	char *line, *f[4];
	int n = 0;

	if (user && max > 0)
		groups[n++] = *gid;
	if (lines_open(&l, path) < 0)
		return user ? n : -1;
	while ((line = next_line(&l))) {
		uint32_t id;

		if (split(line, f, 4) < 4 || !userdb_parse_id(f[2], &id))
			continue;
		if (name && !strcmp(f[0], name)) {
			*gid = id;
			n = 1;
			break;
		}
		if (user && n < max && id != groups[0] && is_member(f[3], user))
			groups[n++] = id;
	}
	raw1(SYS_close, l.fd);
	return name ? (n ? 0 : -1) : n;
}

int userdb_group_by_name(const char *group, const char *name, uint32_t *gid)
{
	return scan_groups(group, name, gid, NULL, NULL, 0);
}

int userdb_group_list(const char *group, const char *user, uint32_t base,
		      uint32_t *groups, int max)
{
	return scan_groups(group, NULL, &base, user, groups, max);
}
