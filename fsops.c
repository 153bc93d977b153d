/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fsops.c - filesystem operations and file transfer (SPEC 6).
 *
 * Every request gets exactly one core.fs.response.  Read and Write are
 * streams kept on a->fs_streams:
 *
 *  - a read stream sends one chunk of at most FS_READ_CHUNK bytes per
 *    turn, only while half the output queue is free, round-robin with the
 *    other read streams (fs_pump), so a download never buffers the file
 *    and never starves an interactive session;
 *  - a write stream writes each core.fs.data chunk synchronously (so a
 *    slow disk holds up the port, not memory) into a temporary file in
 *    the target's directory and renames it into place after the empty
 *    chunk (SPEC 6.4 "agentd's atomic write");
 *  - a failed write leaves a small record so later chunks for the id are
 *    dropped silently until the empty chunk (the 6.4 [FIX]).
 *
 * Errors are "<op prefix>: <strerror> (os error N)" with the prefixes of
 * SPEC 6.  Texts agentd adds where there is no errno:
 *   "readdir: listing does not fit in one frame (4194304 bytes)"
 *   "open for write: too many concurrent write sessions (limit 64)"
 *   "remove_dir: directory tree deeper than 256 levels"
 *   "invalid request: id N is already in use"
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "fmt.h"

#define FS_READ_CHUNK   OUT_READ_CHUNK  /* bytes per core.fs.data */
#define FS_WRITES_MAX   64              /* concurrent write sessions */
#define FS_FAILED_MAX   256             /* remembered failed write ids */
#define RMTREE_DEPTH_MAX 256            /* directory fds held by remove_dir */
#define ERR_TEXT_MAX    320
/* Envelope and payload bytes of a List response besides the entries. */
#define LIST_OVERHEAD   128

enum stream_kind {
	ST_READ,
	ST_WRITE,
	ST_FAILED, /* write that already answered; drops data until EOF */
};

struct fs_stream {
	struct fs_stream *next;
	uint32_t id;
	enum stream_kind kind;
	int fd;
	struct watch watch;  /* read: non-regular file that said EAGAIN */
	bool watched;
	int dirfd;           /* write: the target's directory, or -1 */
	char *tmp;           /* write: temporary name in dirfd, NULL = in place */
	char *base;          /* write: target name in dirfd */
};

/* ------------------------------------------------------------------ */
/* Responses                                                           */

static void respond(struct agent *a, uint32_t id, const char *error)
{
	struct msg m = { .type = MSG_FS_RESPONSE, .gen = PROTO_GEN_SEED };

	m.u.fs_response.ok = error == NULL;
	m.u.fs_response.error = error;
	m.u.fs_response.data_kind = FS_DATA_NONE;
	agent_send(a, id, &m);
}

static void respond_errno(struct agent *a, uint32_t id, const char *prefix, int e)
{
	char text[ERR_TEXT_MAX];

	fmt(text, sizeof(text), "%s: %s (os error %d)", prefix, strerror(e), e);
	respond(a, id, text);
}

static void respond_text(struct agent *a, uint32_t id, const char *prefix,
			 const char *what)
{
	char text[ERR_TEXT_MAX];

	fmt(text, sizeof(text), "%s: %s", prefix, what);
	respond(a, id, text);
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* ------------------------------------------------------------------ */
/* Paths                                                               */

/* Length of the first n bytes of path without trailing slashes ("/"
 * stays "/"). */
static size_t trimmed_len(const char *path, size_t n)
{
	while (n > 1 && path[n - 1] == '/')
		n--;
	return n;
}

/*
 * Length of the parent of the first n bytes of path, like Rust's
 * Path::parent: 0 when there is none or it is empty ("a", "/"), 1 for
 * "/x".
 */
static size_t parent_len(const char *path, size_t n)
{
	n = trimmed_len(path, n);
	if (n <= 1)
		return 0;
	while (n > 0 && path[n - 1] != '/')
		n--;
	if (n == 0)
		return 0;
	return trimmed_len(path, n);
}

static bool is_dir(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/*
 * Rust's create_dir_all on buf (NUL at len), so errors carry the same
 * errno: try the path, create the parent on ENOENT and retry; an existing
 * directory is success.  Recursion depth is bounded by PATH_MAX / 2.
 */
static int mkdir_p(char *buf, size_t len)
{
	size_t p;
	int e, r;

	if (len == 0 || mkdir(buf, 0777) == 0)
		return 0;
	e = errno;
	p = e == ENOENT ? parent_len(buf, len) : 0;
	if (p > 0) {
		char c = buf[p];

		buf[p] = '\0';
		r = mkdir_p(buf, p);
		buf[p] = c;
		if (r)
			return r;
		if (mkdir(buf, 0777) == 0)
			return 0;
		e = errno;
	}
	return is_dir(buf) ? 0 : e;
}

/* mkdir -p of the first len bytes of path; 0 or an errno. */
static int mkdir_parents(const char *path, size_t len)
{
	char buf[PATH_MAX];

	len = trimmed_len(path, len);
	if (len >= sizeof(buf))
		return ENAMETOOLONG;
	memcpy(buf, path, len);
	buf[len] = '\0';
	return mkdir_p(buf, len);
}

/* mkdir -p of path's parent directory. */
static int make_parent(const char *path)
{
	return mkdir_parents(path, parent_len(path, strlen(path)));
}

/*
 * Split path into its directory (opened as an O_PATH fd) and its last
 * component.  Returns the fd, or -1 with errno; base is NULL when the
 * path has no usable last component ("x/", ".", "..", "/").
 */
static int open_parent(const char *path, const char **base)
{
	size_t n = strlen(path), p;
	char dir[PATH_MAX];
	const char *b;

	*base = NULL;
	if (n == 0) {
		errno = ENOENT;
		return -1;
	}
	b = strrchr(path, '/');
	b = b ? b + 1 : path;
	if (*b == '\0' || !strcmp(b, ".") || !strcmp(b, ".."))
		return -1;
	p = (size_t)(b - path);
	if (p >= sizeof(dir)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	if (p == 0) {
		strcpy(dir, ".");
	} else {
		memcpy(dir, path, p);
		dir[p] = '\0';
	}
	*base = b;
	return open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
}

static uint64_t random64(unsigned salt)
{
	struct timespec ts;
	uint64_t r;

	if (getrandom(&r, sizeof(r), GRND_NONBLOCK) == (ssize_t)sizeof(r))
		return r;
	/* Early boot before the pool is ready: O_EXCL still makes the name
	 * safe, guessing it only lets a process make us retry. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	r = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec;
	return r ^ ((uint64_t)salt << 40) ^ (uint64_t)getpid();
}

/*
 * Create a new temporary file next to base in dirfd: O_EXCL and
 * O_NOFOLLOW, so nothing a guest process planted there is opened.
 * Mode 0666 & ~umask.  Returns the fd and the name in name.
 */
static int open_temp(int dirfd, const char *base, char *name, size_t cap)
{
	int tries, fd = -1;

	for (tries = 0; tries < 16; tries++) {
		fmt(name, cap, ".%.180s.%016llx.agentd-tmp", base,
			 (unsigned long long)random64((unsigned)tries));
		fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL |
			    O_NOFOLLOW | O_CLOEXEC, 0666);
		if (fd >= 0 || errno != EEXIST)
			break;
	}
	return fd;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Entries (6.1, 6.2)                                                  */

static const char *kind_of(mode_t m)
{
	if (S_ISREG(m))
		return "file";
	if (S_ISDIR(m))
		return "dir";
	if (S_ISLNK(m))
		return "symlink";
	return "other";
}

static void entry_from_stat(struct fs_entry *e, const char *path,
			    const struct stat *st)
{
	memset(e, 0, sizeof(*e));
	e->path = path;
	e->kind = kind_of(st->st_mode);
	e->size = st->st_size > 0 ? (uint64_t)st->st_size : 0;
	e->mode = st->st_mode;
	e->has_modified = st->st_mtime >= 0;
	e->modified = st->st_mtime;
}

static void entry_unknown(struct fs_entry *e, const char *path)
{
	memset(e, 0, sizeof(*e));
	e->path = path;
	e->kind = "other";
}

/* Exact encoded size of one seed FsEntryInfo (SPEC 4.2). */
static size_t entry_wire_size(const struct fs_entry *e)
{
	struct cbor_out o = { 0 };

	cbor_put_map(&o, 5);
	cbor_put_str(&o, "path");
	cbor_put_str(&o, e->path);
	cbor_put_str(&o, "kind");
	cbor_put_str(&o, e->kind);
	cbor_put_str(&o, "size");
	cbor_put_uint(&o, e->size);
	cbor_put_str(&o, "mode");
	cbor_put_uint(&o, e->mode);
	cbor_put_str(&o, "modified");
	if (e->has_modified)
		cbor_put_int(&o, e->modified);
	else
		cbor_put_null(&o);
	return o.len;
}

static void fs_stat(struct agent *a, uint32_t id, const char *path)
{
	struct msg m = { .type = MSG_FS_RESPONSE, .gen = PROTO_GEN_SEED };
	struct stat st;

	if (lstat(path, &st) < 0) {
		respond_errno(a, id, "stat", errno);
		return;
	}
	m.u.fs_response.ok = true;
	m.u.fs_response.data_kind = FS_DATA_STAT;
	entry_from_stat(&m.u.fs_response.stat, path, &st);
	agent_send(a, id, &m);
}

struct listing {
	struct fs_entry *v;
	size_t n, cap;
	size_t bytes;  /* encoded size of the entries so far */
};

static void listing_free(struct listing *l)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		free((char *)l->v[i].path);
	free(l->v);
}

static char *join_path(const char *dir, const char *name)
{
	size_t dn = strlen(dir), nn = strlen(name);
	bool slash = dn > 0 && dir[dn - 1] != '/';
	char *p = malloc(dn + slash + nn + 1);

	if (!p)
		return NULL;
	memcpy(p, dir, dn);
	if (slash)
		p[dn] = '/';
	memcpy(p + dn + slash, name, nn + 1);
	return p;
}

/* Add one entry; 0, ENOMEM, or E2BIG when the response would not fit. */
static int listing_add(struct listing *l, int dfd, const char *dir,
		       const char *name)
{
	struct fs_entry *e;
	struct stat st;
	char *path;

	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		struct fs_entry *v = realloc(l->v, cap * sizeof(*v));

		if (!v)
			return ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	path = join_path(dir, name);
	if (!path)
		return ENOMEM;
	e = &l->v[l->n++];
	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
		entry_from_stat(e, path, &st);
	else
		entry_unknown(e, path);
	l->bytes += entry_wire_size(e);
	if (l->bytes + LIST_OVERHEAD > FRAME_LEN_MAX)
		return E2BIG;
	return 0;
}

/* Read every entry of d into l; 0 or an errno (E2BIG: too large). */
static int listing_read(struct listing *l, DIR *d, const char *dir)
{
	struct dirent *de;

	for (;;) {
		int r;

		errno = 0;
		de = readdir(d);
		if (!de)
			return errno;
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		r = listing_add(l, dirfd(d), dir, de->d_name);
		if (r)
			return r;
	}
}

static void fs_list(struct agent *a, uint32_t id, const char *path)
{
	struct msg m = { .type = MSG_FS_RESPONSE, .gen = PROTO_GEN_SEED };
	struct listing l = { 0 };
	DIR *d;
	int fd, r;

	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NONBLOCK);
	d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		respond_errno(a, id, "opendir", errno);
		if (fd >= 0)
			close(fd);
		return;
	}
	r = listing_read(&l, d, path);
	closedir(d);
	if (r == E2BIG) {
		respond_text(a, id, "readdir",
			     "listing does not fit in one frame (4194304 bytes)");
	} else if (r) {
		respond_errno(a, id, "readdir", r);
	} else {
		m.u.fs_response.ok = true;
		m.u.fs_response.data_kind = FS_DATA_LIST;
		m.u.fs_response.list = l.v;
		m.u.fs_response.nlist = l.n;
		if (agent_send(a, id, &m) < 0)
			respond_text(a, id, "readdir",
				     "listing does not fit in one frame (4194304 bytes)");
	}
	listing_free(&l);
}

/* ------------------------------------------------------------------ */
/* Streams                                                             */

static struct fs_stream *stream_find(const struct agent *a, uint32_t id)
{
	struct fs_stream *s;

	for (s = a->fs_streams; s; s = s->next)
		if (s->id == id)
			return s;
	return NULL;
}

static struct fs_stream *stream_new(struct agent *a, uint32_t id,
				    enum stream_kind kind)
{
	struct fs_stream *s = calloc(1, sizeof(*s)), **pp;

	if (!s)
		return NULL;
	s->id = id;
	s->kind = kind;
	s->fd = -1;
	s->dirfd = -1;
	for (pp = &a->fs_streams; *pp; pp = &(*pp)->next)
		;
	*pp = s;
	return s;
}

static void stream_unlink(struct agent *a, struct fs_stream *s)
{
	struct fs_stream **pp;

	for (pp = &a->fs_streams; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			return;
		}
	}
}

/* Drop a write's resources; the temporary file goes with it. */
static void write_discard(struct agent *a, struct fs_stream *s)
{
	close_fd(&s->fd);
	if (s->tmp && s->dirfd >= 0)
		unlinkat(s->dirfd, s->tmp, 0);
	close_fd(&s->dirfd);
	free(s->tmp);
	free(s->base);
	s->tmp = s->base = NULL;
	if (s->kind == ST_WRITE && a->nwrites > 0)
		a->nwrites--;
}

static void stream_free(struct agent *a, struct fs_stream *s)
{
	if (s->watched)
		agent_unwatch(a, &s->watch);
	write_discard(a, s);
	stream_unlink(a, s);
	free(s);
}

/* Make s the first stream, keeping the cyclic order (fairness). */
static void streams_rotate_to(struct agent *a, struct fs_stream *s)
{
	struct fs_stream *head = a->fs_streams, *t, *prev = NULL;

	if (head == s)
		return;
	for (t = head; t && t != s; t = t->next)
		prev = t;
	if (!t)
		return;
	prev->next = NULL;
	a->fs_streams = s;
	for (t = s; t->next; t = t->next)
		;
	t->next = head;
}

/* Forget the oldest failed ids beyond FS_FAILED_MAX. */
static void failed_trim(struct agent *a)
{
	struct fs_stream *s, *oldest = NULL;
	unsigned n = 0;

	for (s = a->fs_streams; s; s = s->next) {
		if (s->kind != ST_FAILED)
			continue;
		if (!oldest)
			oldest = s;
		n++;
	}
	if (n > FS_FAILED_MAX)
		stream_free(a, oldest);
}

/* ------------------------------------------------------------------ */
/* Read (6.3)                                                          */

static void read_ready(struct agent *a, struct watch *w, uint32_t events)
{
	struct fs_stream *s = (struct fs_stream *)((char *)w -
						   offsetof(struct fs_stream, watch));

	(void)events;
	agent_unwatch(a, w);
	s->watched = false;
	fs_pump(a);
}

/* A non-regular file with no data yet: resume when it is readable. */
static void read_wait(struct agent *a, struct fs_stream *s)
{
	s->watch.fd = s->fd;
	s->watch.handle = read_ready;
	if (agent_watch(a, &s->watch, EPOLLIN) < 0) {
		respond_errno(a, s->id, "read", errno);
		stream_free(a, s);
		return;
	}
	s->watched = true;
}

/* Send the next chunk of s, or its end.  s may be freed. */
static void read_step(struct agent *a, struct fs_stream *s)
{
	uint8_t buf[FS_READ_CHUNK];
	struct msg m = { .type = MSG_FS_DATA, .gen = PROTO_GEN_SEED };
	ssize_t n;

	do
		n = read(s->fd, buf, sizeof(buf));
	while (n < 0 && errno == EINTR);
	if (n > 0) {
		m.u.data.data.p = buf;
		m.u.data.data.n = (size_t)n;
		if (agent_send(a, s->id, &m) == 0)
			return;
		errno = EFBIG;
	}
	if (n < 0 && errno == EAGAIN) {
		read_wait(a, s);
		return;
	}
	if (n == 0)
		respond(a, s->id, NULL);
	else
		respond_errno(a, s->id, "read", errno);
	stream_free(a, s);
}

static void fs_read(struct agent *a, uint32_t id, const char *path)
{
	struct fs_stream *s;
	int fd;

	/* O_NONBLOCK: a FIFO or terminal must not stall the loop. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		respond_errno(a, id, "open", errno);
		return;
	}
	s = stream_new(a, id, ST_READ);
	if (!s) {
		close(fd);
		respond_errno(a, id, "open", ENOMEM);
		return;
	}
	s->fd = fd;
	fs_pump(a);
}

static bool read_runnable(const struct fs_stream *s)
{
	return s->kind == ST_READ && !s->watched;
}

/*
 * File reads take the output queue only down to half its room: sessions
 * re-arm their pipes in session_pump and read them on the next event, so
 * if reads filled the queue every round an interactive exec would find
 * no room, ever.  With half kept free its output always gets queued.
 */
static bool read_room(const struct agent *a)
{
	return agent_out_room(a) > OUT_SOFT_LIMIT / 2;
}

void fs_pump(struct agent *a)
{
	bool progress = true;

	while (progress) {
		struct fs_stream *s, *next;

		progress = false;
		for (s = a->fs_streams; s; s = next) {
			next = s->next;
			if (!read_runnable(s))
				continue;
			if (!read_room(a)) {
				/* Next time, start where this round stopped. */
				streams_rotate_to(a, s);
				return;
			}
			read_step(a, s);
			progress = true;
		}
	}
}

/* ------------------------------------------------------------------ */
/* Write (6.4)                                                         */

/* Answer a failed write once and remember its id (the 6.4 [FIX]). */
static void write_fail(struct agent *a, struct fs_stream *s,
		       const char *prefix, int e)
{
	respond_errno(a, s->id, prefix, e);
	write_discard(a, s);
	s->kind = ST_FAILED;
	failed_trim(a);
}

static void write_fail_id(struct agent *a, uint32_t id, const char *prefix,
			  int e, const char *text)
{
	struct fs_stream *s;

	if (text)
		respond_text(a, id, prefix, text);
	else
		respond_errno(a, id, prefix, e);
	s = stream_new(a, id, ST_FAILED);
	if (s)
		failed_trim(a);
}

static int clear_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
}

/*
 * The reference's in-place write: follows a symlink, truncates.  Used for
 * targets that are not regular files.  O_NONBLOCK only for the open, so
 * a FIFO without a reader fails instead of blocking PID 1.
 */
static int open_in_place(struct fs_stream *s, const char *path)
{
	s->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC |
		     O_NOCTTY | O_NONBLOCK, 0666);
	if (s->fd < 0 || clear_nonblock(s->fd) < 0)
		return errno;
	return 0;
}

/*
 * Existing regular file: the temporary file takes over its owner and
 * permission bits.  If we may write the file but not replace it (no
 * write permission on the directory, or a foreign owner we cannot give
 * the copy), fall back to the reference's in-place truncation.
 */
static int open_replace(struct fs_stream *s, const struct stat *st)
{
	char name[NAME_MAX + 1];
	int fd, e;

	/* Permission check first, so the errors are the reference's. */
	fd = openat(s->dirfd, s->base, O_WRONLY | O_NOFOLLOW | O_CLOEXEC |
		    O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return errno;
	s->fd = open_temp(s->dirfd, s->base, name, sizeof(name));
	if (s->fd >= 0 && fchown(s->fd, st->st_uid, st->st_gid) == 0 &&
	    fchmod(s->fd, st->st_mode & 07777) == 0) {
		close(fd);
		s->tmp = strdup(name);
		if (s->tmp)
			return 0;
		e = ENOMEM;
		unlinkat(s->dirfd, name, 0);
		close_fd(&s->fd);
		return e;
	}
	if (s->fd >= 0)
		unlinkat(s->dirfd, name, 0);
	close_fd(&s->fd);
	close(fd);
	/* O_TRUNC, not ftruncate: files of /proc and /sys (regular files
	 * in a directory nobody can create in) accept only the former. */
	s->fd = openat(s->dirfd, s->base, O_WRONLY | O_TRUNC | O_NOFOLLOW |
		       O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (s->fd < 0 || clear_nonblock(s->fd) < 0)
		return errno;
	return 0;
}

static int open_new(struct fs_stream *s)
{
	char name[NAME_MAX + 1];

	s->fd = open_temp(s->dirfd, s->base, name, sizeof(name));
	if (s->fd < 0)
		return errno;
	s->tmp = strdup(name);
	return s->tmp ? 0 : ENOMEM;
}

/* Open the target of s; 0 or an errno for "open for write". */
static int write_open_target(struct fs_stream *s, const char *path)
{
	const char *base;
	struct stat st;

	s->dirfd = open_parent(path, &base);
	if (!base) {
		close_fd(&s->dirfd);
		return open_in_place(s, path);
	}
	if (s->dirfd < 0)
		return errno;
	s->base = strdup(base);
	if (!s->base)
		return ENOMEM;
	if (fstatat(s->dirfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno != ENOENT)
			return errno;
		return open_new(s);
	}
	if (S_ISREG(st.st_mode))
		return open_replace(s, &st);
	close_fd(&s->dirfd);
	return open_in_place(s, path);
}

static void fs_write(struct agent *a, uint32_t id, const struct fs_request *rq)
{
	struct fs_stream *s;
	int e;

	if (a->nwrites >= FS_WRITES_MAX) {
		write_fail_id(a, id, "open for write", 0,
			      "too many concurrent write sessions (limit 64)");
		return;
	}
	e = make_parent(rq->path);
	if (e) {
		write_fail_id(a, id, "mkdir parent", e, NULL);
		return;
	}
	s = stream_new(a, id, ST_WRITE);
	if (!s) {
		respond_errno(a, id, "open for write", ENOMEM);
		return;
	}
	a->nwrites++;
	e = write_open_target(s, rq->path);
	if (e) {
		write_fail(a, s, "open for write", e);
		return;
	}
	if (rq->has_mode && fchmod(s->fd, rq->mode & 07777) < 0)
		write_fail(a, s, "set permissions", errno);
}

/* The empty chunk: close, then move the temporary file into place. */
static void write_finish(struct agent *a, struct fs_stream *s)
{
	int r = close(s->fd);

	s->fd = -1;
	if (r < 0 && errno != EINTR) {
		respond_errno(a, s->id, "flush", errno);
	} else if (s->tmp && renameat(s->dirfd, s->tmp, s->dirfd, s->base) < 0) {
		respond_errno(a, s->id, "flush", errno);
	} else {
		free(s->tmp);
		s->tmp = NULL;  /* renamed: nothing to remove */
		respond(a, s->id, NULL);
	}
	stream_free(a, s);
}

void fs_data(struct agent *a, uint32_t id, struct slice data)
{
	struct fs_stream *s = stream_find(a, id);
	char text[64];

	if (!s || (s->kind != ST_WRITE && s->kind != ST_FAILED)) {
		fmt(text, sizeof(text), "unknown write session: %u", id);
		respond(a, id, text);
		return;
	}
	if (s->kind == ST_FAILED) {
		if (data.n == 0)
			stream_free(a, s);
		return;
	}
	if (data.n == 0) {
		write_finish(a, s);
		return;
	}
	if (write_all(s->fd, data.p, data.n) < 0)
		write_fail(a, s, "write", errno);
}

/* ------------------------------------------------------------------ */
/* RemoveDir (6.5): never follows a symlink                             */

enum { RM_TOO_DEEP = -1 };  /* not an errno */

struct rm_level {
	DIR *d;
	char *name;      /* this directory's name in the level above */
	bool removed;    /* an entry went away during this pass */
};

/* Remove one non-directory entry, or open a directory entry as a new
 * level.  0 or an errno. */
static int rmtree_entry(struct rm_level *stack, int *depth, const char *name)
{
	struct rm_level *top = &stack[*depth];
	int dfd = dirfd(top->d), fd, ue;
	DIR *sub;

	if (unlinkat(dfd, name, 0) == 0) {
		top->removed = true;
		return 0;
	}
	ue = errno;
	if (ue != EISDIR && ue != EPERM)
		return ue == ENOENT ? 0 : ue;
	/* A directory (Linux says EISDIR, some filesystems EPERM).  A
	 * symlink swapped in meanwhile fails O_NOFOLLOW: an error, never a
	 * walk outside the tree. */
	fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
		    O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		return ue == EPERM && errno == ENOTDIR ? EPERM : errno;
	}
	if (*depth + 1 >= RMTREE_DEPTH_MAX) {
		close(fd);
		return RM_TOO_DEEP;
	}
	sub = fdopendir(fd);
	if (!sub) {
		close(fd);
		return errno;
	}
	(*depth)++;
	stack[*depth].d = sub;
	stack[*depth].name = strdup(name);
	stack[*depth].removed = false;
	if (!stack[*depth].name)
		return ENOMEM;
	return 0;
}

/* The top level is empty (a pass removed nothing): remove it. */
static int rmtree_pop(struct rm_level *stack, int *depth)
{
	struct rm_level *top = &stack[*depth];
	int e = 0;

	closedir(top->d);
	if (*depth > 0) {
		struct rm_level *up = &stack[*depth - 1];

		if (unlinkat(dirfd(up->d), top->name, AT_REMOVEDIR) < 0 &&
		    errno != ENOENT)
			e = errno;
		up->removed = true;
	}
	free(top->name);
	(*depth)--;
	return e;
}

/* Entries removed during readdir may hide others: rescan until a whole
 * pass removes nothing. */
static int rmtree_step(struct rm_level *stack, int *depth)
{
	struct rm_level *top = &stack[*depth];
	struct dirent *de;

	errno = 0;
	de = readdir(top->d);
	if (de) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			return 0;
		return rmtree_entry(stack, depth, de->d_name);
	}
	if (errno)
		return errno;
	if (top->removed) {
		top->removed = false;
		rewinddir(top->d);
		return 0;
	}
	return rmtree_pop(stack, depth);
}

/* Empty the directory open on fd (consumed) without following links. */
static int rmtree_contents(int fd)
{
	struct rm_level *stack = calloc(RMTREE_DEPTH_MAX, sizeof(*stack));
	int depth = 0, e = 0;

	if (!stack) {
		close(fd);
		return ENOMEM;
	}
	stack[0].d = fdopendir(fd);
	if (!stack[0].d) {
		e = errno;
		close(fd);
		free(stack);
		return e;
	}
	while (depth >= 0 && !e)
		e = rmtree_step(stack, &depth);
	for (; depth >= 0; depth--) {
		closedir(stack[depth].d);
		free(stack[depth].name);
	}
	free(stack);
	return e;
}

static void fs_remove_dir(struct agent *a, uint32_t id, const char *path)
{
	struct stat st;
	int fd, e;

	if (lstat(path, &st) < 0) {
		respond_errno(a, id, "remove_dir", errno);
		return;
	}
	if (S_ISLNK(st.st_mode)) {
		if (unlink(path) < 0)
			respond_errno(a, id, "remove_dir", errno);
		else
			respond(a, id, NULL);
		return;
	}
	fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC |
		  O_NONBLOCK);
	if (fd < 0) {
		respond_errno(a, id, "remove_dir", errno);
		return;
	}
	e = rmtree_contents(fd);
	if (e == RM_TOO_DEEP) {
		respond_text(a, id, "remove_dir",
			     "directory tree deeper than 256 levels");
		return;
	}
	if (!e && rmdir(path) < 0)
		e = errno;
	if (e)
		respond_errno(a, id, "remove_dir", e);
	else
		respond(a, id, NULL);
}

/* ------------------------------------------------------------------ */
/* Copy, Rename, Mkdir, Remove (6.5)                                   */

static int copy_bytes(int from, int to)
{
	uint8_t buf[FS_READ_CHUNK];
	ssize_t n;

	for (;;) {
		n = copy_file_range(from, NULL, to, NULL, 1u << 30, 0);
		if (n == 0)
			return 0;
		if (n < 0)
			break;
	}
	if (errno != EXDEV && errno != ENOSYS && errno != EINVAL &&
	    errno != EOPNOTSUPP)
		return errno;
	for (;;) {
		n = read(from, buf, sizeof(buf));
		if (n == 0)
			return 0;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno;
		}
		if (write_all(to, buf, (size_t)n) < 0)
			return errno;
	}
}

/*
 * dst is never opened by name: the copy goes to a new O_EXCL|O_NOFOLLOW
 * file in dst's directory that is renamed over dst, so a symlink planted
 * at dst is replaced, not written through.  0 or an errno.
 */
static int copy_into(int sfd, const struct stat *sst, const char *dst)
{
	char name[NAME_MAX + 1];
	const char *base;
	struct stat dst_st;
	int dfd, tfd, e, have_dst;

	dfd = open_parent(dst, &base);
	if (!base) {
		if (dfd >= 0)
			close(dfd);
		return EISDIR;
	}
	if (dfd < 0)
		return errno;
	have_dst = fstatat(dfd, base, &dst_st, AT_SYMLINK_NOFOLLOW) == 0;
	if (have_dst && S_ISDIR(dst_st.st_mode)) {
		close(dfd);
		return EISDIR;
	}
	if (have_dst && S_ISREG(dst_st.st_mode)) {
		/* The reference would need write access to dst itself. */
		tfd = openat(dfd, base, O_WRONLY | O_NOFOLLOW | O_CLOEXEC |
			     O_NONBLOCK | O_NOCTTY);
		if (tfd < 0) {
			e = errno;
			close(dfd);
			return e;
		}
		close(tfd);
	}
	tfd = open_temp(dfd, base, name, sizeof(name));
	if (tfd < 0) {
		e = errno;
		close(dfd);
		return e;
	}
	e = copy_bytes(sfd, tfd);
	if (!e && have_dst && S_ISREG(dst_st.st_mode))
		(void)!fchown(tfd, dst_st.st_uid, dst_st.st_gid);
	if (!e && fchmod(tfd, sst->st_mode & 07777) < 0)
		e = errno;
	if (close(tfd) < 0 && !e && errno != EINTR)
		e = errno;
	if (!e && renameat(dfd, name, dfd, base) < 0)
		e = errno;
	if (e)
		unlinkat(dfd, name, 0);
	close(dfd);
	return e;
}

static void fs_copy(struct agent *a, uint32_t id, const char *src,
		    const char *dst)
{
	struct stat st;
	int fd, e;

	fd = open(src, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		respond_errno(a, id, "copy", errno);
		return;
	}
	if (fstat(fd, &st) < 0) {
		respond_errno(a, id, "copy", errno);
		close(fd);
		return;
	}
	if (!S_ISREG(st.st_mode)) {
		respond_text(a, id, "copy", "the source path is neither "
			     "a regular file nor a symlink to a regular file");
		close(fd);
		return;
	}
	e = make_parent(dst);
	if (e) {
		close(fd);
		respond_errno(a, id, "mkdir parent", e);
		return;
	}
	e = copy_into(fd, &st, dst);
	close(fd);
	if (e)
		respond_errno(a, id, "copy", e);
	else
		respond(a, id, NULL);
}

static void fs_rename(struct agent *a, uint32_t id, const char *src,
		      const char *dst)
{
	int e = make_parent(dst);

	if (e)
		respond_errno(a, id, "mkdir parent", e);
	else if (rename(src, dst) < 0)
		respond_errno(a, id, "rename", errno);
	else
		respond(a, id, NULL);
}

static void fs_mkdir(struct agent *a, uint32_t id, const char *path)
{
	int e = mkdir_parents(path, strlen(path));

	if (e)
		respond_errno(a, id, "mkdir", e);
	else
		respond(a, id, NULL);
}

static void fs_remove(struct agent *a, uint32_t id, const char *path)
{
	if (unlink(path) < 0)
		respond_errno(a, id, "remove", errno);
	else
		respond(a, id, NULL);
}

/* ------------------------------------------------------------------ */
/* Dispatch                                                            */

static bool request_paths_ok(const struct fs_request *rq)
{
	if (rq->op == FS_COPY || rq->op == FS_RENAME)
		return rq->src && rq->dst;
	return rq->path != NULL;
}

void fs_request(struct agent *a, uint32_t id, const struct fs_request *rq)
{
	struct fs_stream *s;
	char text[64];

	s = stream_find(a, id);
	if (s && s->kind == ST_FAILED) {
		stream_free(a, s);  /* that exchange is over */
	} else if (s) {
		fmt(text, sizeof(text), "id %u is already in use", id);
		respond_text(a, id, "invalid request", text);
		return;
	}
	if (!request_paths_ok(rq)) {
		respond_text(a, id, "invalid request", "missing path");
		return;
	}
	switch (rq->op) {
	case FS_STAT:       fs_stat(a, id, rq->path); break;
	case FS_LIST:       fs_list(a, id, rq->path); break;
	case FS_READ:       fs_read(a, id, rq->path); break;
	case FS_WRITE:      fs_write(a, id, rq); break;
	case FS_MKDIR:      fs_mkdir(a, id, rq->path); break;
	case FS_REMOVE:     fs_remove(a, id, rq->path); break;
	case FS_REMOVE_DIR: fs_remove_dir(a, id, rq->path); break;
	case FS_COPY:       fs_copy(a, id, rq->src, rq->dst); break;
	case FS_RENAME:     fs_rename(a, id, rq->src, rq->dst); break;
	default:
		respond_text(a, id, "invalid request",
			     "operation not supported in this generation");
	}
}

bool fs_id_live(const struct agent *a, uint32_t id)
{
	const struct fs_stream *s = stream_find(a, id);

	return s && (s->kind == ST_READ || s->kind == ST_WRITE);
}

void fs_abort_all(struct agent *a)
{
	while (a->fs_streams)
		stream_free(a, a->fs_streams);
	a->nwrites = 0;
}
