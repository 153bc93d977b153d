/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fsops.c - filesystem operations and file transfer (SPEC 6), as the
 * children of fsworker.c run them: plain synchronous code that may block
 * on a filesystem for as long as it likes.  A child's responses go into
 * its own copy of the output queue (agent_send, as on the loop) and
 * fs_child_send passes the encoded frame to the agent, which forwards it.
 *
 *  - one-shot requests (Stat, List, Mkdir, Remove, RemoveDir, Copy,
 *    Rename) answer once;
 *  - a Read child says "opened" ('O'), copies the file into its pipe,
 *    then answers; the agent frames the pipe's bytes as core.fs.data;
 *  - a Write child opens a temporary file in the target's directory,
 *    says "opened", copies its pipe into the file until the agent closes
 *    the pipe, and renames the file into place only when the agent then
 *    sends 'C' (the empty chunk came; SPEC 6.4 "agentd's atomic write").
 *    Without it the upload was aborted and the temporary file goes.
 *
 * Errors are "<op prefix>: <strerror> (os error N)" with the prefixes of
 * SPEC 6.  Texts agentd adds where there is no errno:
 *   "readdir: listing does not fit in one frame (4194304 bytes)"
 *   "remove_dir: directory tree deeper than 256 levels"
 *   (fsworker.c adds the limits and "id N is already in use")
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "fmt.h"

#define FS_READ_CHUNK   OUT_READ_CHUNK  /* bytes per core.fs.data */
#define FS_PIPE_CHUNK   (1u << 20)      /* bytes per splice */
#define RMTREE_DEPTH_MAX 256            /* directory fds held by remove_dir */
#define ERR_TEXT_MAX    320
/* Envelope and payload bytes of a List response besides the entries. */
#define LIST_OVERHEAD   128

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

static int clear_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
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
/* Talking to the agent, from a child                                  */

/* Our response frame to the agent, in messages it reads whole. */
void fs_child_send(struct agent *a, int fd)
{
	size_t off = 0;

	while (off < a->out.len) {
		size_t n = a->out.len - off;

		if (n > FS_MSG_MAX)
			n = FS_MSG_MAX;
		if (send(fd, a->out.buf + off, n, MSG_NOSIGNAL) < 0) {
			if (errno == EINTR)
				continue;
			_exit(0);  /* the agent gave us up */
		}
		off += n;
	}
	a->out.len = a->out_head = 0;
}

/* false: the agent gave us up already. */
static bool say_opened(int ctl)
{
	return send(ctl, "O", 1, MSG_NOSIGNAL) == 1;
}

enum { COPY_ANY, COPY_PLAIN = 2 };

/*
 * Everything from one fd into another: copy_file_range between files,
 * splice where one side is a pipe, read and write otherwise.  COPY_PLAIN
 * when to is a FIFO or device: a splice into a FIFO whose reader left
 * fails even when from is at its end.  0 at the end of from, or the
 * errno of the failed call.
 */
static int copy_bytes(int from, int to, int how)
{
	uint8_t buf[FS_READ_CHUNK];
	ssize_t n;

	for (;;) {
		if (how == 0)
			n = copy_file_range(from, NULL, to, NULL, 1u << 30, 0);
		else if (how == 1)
			n = splice(from, NULL, to, NULL, FS_PIPE_CHUNK, SPLICE_F_MOVE);
		else
			n = read(from, buf, sizeof(buf));
		if (n == 0)
			return 0;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && how < 2 && (errno == EXDEV || errno == ENOSYS ||
					 errno == EINVAL || errno == EOPNOTSUPP)) {
			how++;
			continue;
		}
		if (n < 0)
			return errno;
		if (how == 2 && write_all(to, buf, (size_t)n) < 0)
			return errno;
	}
}

/* ------------------------------------------------------------------ */
/* Read (6.3): file -> pipe, in the stream's child                      */

/* True when it ended cleanly (the response is OK). */
static bool child_read(struct agent *a, uint32_t id, const char *path,
		       int ctl, int out)
{
	int fd, e;

	/* O_NONBLOCK for the open: a FIFO without a writer reads as empty,
	 * as it always did. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		respond_errno(a, id, "open", errno);
		return false;
	}
	if (!say_opened(ctl))
		_exit(0);
	e = clear_nonblock(fd) < 0 ? errno : copy_bytes(fd, out, COPY_ANY);
	close(fd);
	if (e == EPIPE)
		_exit(0);  /* cancelled */
	if (e)
		respond_errno(a, id, "read", e);
	else
		respond(a, id, NULL);
	return !e;
}

/* ------------------------------------------------------------------ */
/* Write (6.4): pipe -> temporary file, in the stream's child           */

struct wfile {
	int fd;
	int dirfd;   /* the target's directory, or -1 */
	char *tmp;   /* temporary name in dirfd, NULL = in place */
	char *base;  /* target name in dirfd */
};

/* Drop a write's resources; the temporary file goes with it. */
static void write_discard(struct wfile *s)
{
	close_fd(&s->fd);
	if (s->tmp && s->dirfd >= 0)
		unlinkat(s->dirfd, s->tmp, 0);
	close_fd(&s->dirfd);
	free(s->tmp);
	free(s->base);
	s->tmp = s->base = NULL;
}

/*
 * The reference's in-place write: follows a symlink, truncates.  Used for
 * targets that are not regular files.  O_NONBLOCK only for the open, so
 * a FIFO without a reader fails instead of waiting.
 */
static int open_in_place(struct wfile *s, const char *path)
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
static int open_replace(struct wfile *s, const struct stat *st)
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

static int open_new(struct wfile *s)
{
	char name[NAME_MAX + 1];

	s->fd = open_temp(s->dirfd, s->base, name, sizeof(name));
	if (s->fd < 0)
		return errno;
	s->tmp = strdup(name);
	return s->tmp ? 0 : ENOMEM;
}

/* Open the target of s; 0 or an errno for "open for write". */
static int write_open_target(struct wfile *s, const char *path)
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

/*
 * Put tmp in dirfd in place of base.  A mount point (a bind-mounted
 * file such as /etc/hosts) cannot be replaced (EBUSY): its content is
 * rewritten in place instead.  0 or an errno.
 */
static int put_in_place(int dirfd, const char *tmp, const char *base)
{
	int from, to, e;

	if (renameat(dirfd, tmp, dirfd, base) == 0)
		return 0;
	if (errno != EBUSY)
		return errno;
	from = openat(dirfd, tmp, O_RDONLY | O_CLOEXEC);
	to = openat(dirfd, base, O_WRONLY | O_TRUNC | O_NOFOLLOW | O_CLOEXEC |
		    O_NOCTTY);
	e = from < 0 || to < 0 ? errno : copy_bytes(from, to, COPY_ANY);
	if (to >= 0 && close(to) < 0 && !e && errno != EINTR)
		e = errno;
	if (from >= 0)
		close(from);
	if (!e)
		unlinkat(dirfd, tmp, 0);
	return e;
}

/* After the agent's commit: close, then move the temporary file into
 * place.  0 or an errno for "flush". */
static int write_finish(struct wfile *s)
{
	int r = close(s->fd), e;

	s->fd = -1;
	if (r < 0 && errno != EINTR)
		return errno;
	if (!s->tmp)
		return 0;
	e = put_in_place(s->dirfd, s->tmp, s->base);
	if (!e) {
		free(s->tmp);
		s->tmp = NULL;  /* in place: nothing to remove */
	}
	return e;
}

/*
 * The data comes through in until the agent closes it; then one byte on
 * ctl says "put it in place" ('C'), or ctl closes: the upload was
 * aborted and the temporary file goes.
 */
static bool child_write(struct agent *a, uint32_t id,
			const struct fs_request *rq, int ctl, int in)
{
	struct wfile s = { .fd = -1, .dirfd = -1 };
	const char *prefix = "open for write";
	struct stat st;
	char c;
	int e = make_parent(rq->path);

	if (e)
		prefix = "mkdir parent";
	else
		e = write_open_target(&s, rq->path);
	if (!e && rq->has_mode && fchmod(s.fd, rq->mode & 07777) < 0) {
		prefix = "set permissions";
		e = errno;
	}
	if (!e) {
		prefix = "write";
		e = say_opened(ctl) ? copy_bytes(in, s.fd, fstat(s.fd, &st) == 0 &&
			S_ISREG(st.st_mode) ? COPY_ANY : COPY_PLAIN) : -1;
	}
	if (e <= 0) {
		if (e < 0 || recv(ctl, &c, 1, 0) != 1 || c != 'C') {
			write_discard(&s);
			_exit(0);
		}
		prefix = "flush";
		e = write_finish(&s);
	}
	if (e)
		respond_errno(a, id, prefix, e);
	else
		respond(a, id, NULL);
	write_discard(&s);
	return !e;
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

/* Copy sfd into base itself, as Write does for devices, FIFOs, and files
 * where no temporary file can be made (/proc, /sys).  0 or an errno. */
static int copy_in_place(int sfd, int dfd, const char *base)
{
	int tfd = openat(dfd, base, O_WRONLY | O_TRUNC | O_NOFOLLOW |
			 O_CLOEXEC | O_NOCTTY | O_NONBLOCK), e;

	if (tfd < 0)
		return errno;
	e = clear_nonblock(tfd) < 0 ? errno : copy_bytes(sfd, tfd, COPY_PLAIN);
	if (close(tfd) < 0 && !e && errno != EINTR)
		e = errno;
	return e;
}

/*
 * dst is never opened by name: the copy goes to a new O_EXCL|O_NOFOLLOW
 * file in dst's directory that is renamed over dst, so a symlink planted
 * at dst is replaced, not written through.  An existing device, FIFO or
 * socket is written in place (Copy to /dev/null must not replace it).
 * 0 or an errno.
 */
static int copy_into(int sfd, const struct stat *sst, const char *dst)
{
	char name[NAME_MAX + 1];
	const char *base;
	struct stat dst_st;
	int dfd, tfd, e;
	bool have_dst, reg;

	dfd = open_parent(dst, &base);
	if (!base) {
		if (dfd >= 0)
			close(dfd);
		return EISDIR;
	}
	if (dfd < 0)
		return errno;
	have_dst = fstatat(dfd, base, &dst_st, AT_SYMLINK_NOFOLLOW) == 0;
	reg = have_dst && S_ISREG(dst_st.st_mode);
	if (have_dst && S_ISDIR(dst_st.st_mode)) {
		e = EISDIR;
		goto out;
	}
	if (have_dst && !reg && !S_ISLNK(dst_st.st_mode)) {
		e = copy_in_place(sfd, dfd, base);
		goto out;
	}
	if (reg) {
		/* The reference would need write access to dst itself. */
		tfd = openat(dfd, base, O_WRONLY | O_NOFOLLOW | O_CLOEXEC |
			     O_NONBLOCK | O_NOCTTY);
		e = errno;
		if (tfd < 0)
			goto out;
		close(tfd);
	}
	tfd = open_temp(dfd, base, name, sizeof(name));
	if (tfd < 0) {
		e = reg ? copy_in_place(sfd, dfd, base) : errno;
		goto out;
	}
	e = copy_bytes(sfd, tfd, COPY_ANY);
	if (!e && reg)
		(void)!fchown(tfd, dst_st.st_uid, dst_st.st_gid);
	if (!e && fchmod(tfd, sst->st_mode & 07777) < 0)
		e = errno;
	if (close(tfd) < 0 && !e && errno != EINTR)
		e = errno;
	if (!e)
		e = put_in_place(dfd, name, base);
	if (e)
		unlinkat(dfd, name, 0);
out:
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
/* Requests, as the agent passes them to a child                        */

void fs_respond(struct agent *a, uint32_t id, const char *prefix, int e,
		const char *text)
{
	if (!prefix)
		respond(a, id, text);
	else if (text)
		respond_text(a, id, prefix, text);
	else
		respond_errno(a, id, prefix, e);
}

/* id, op, has_mode, mode, then one or two NUL-terminated paths. */
static int request_decode(const uint8_t *p, size_t n, uint32_t *id,
			  struct fs_request *rq)
{
	const char *s1 = (const char *)p + FS_REQ_HEAD, *s2;

	memset(rq, 0, sizeof(*rq));
	if (n < FS_REQ_HEAD + 2 || p[n - 1] != 0)
		return -1;
	memcpy(id, p, 4);
	rq->op = p[4];
	rq->has_mode = p[5];
	memcpy(&rq->mode, p + 6, 4);
	s2 = s1 + strlen(s1) + 1;
	if (s2 >= (const char *)p + n)
		return -1;
	rq->path = rq->src = s1;
	rq->dst = s2;
	return 0;
}

void fs_child_op(struct agent *a, const uint8_t *p, size_t n)
{
	struct fs_request rq;
	uint32_t id = 0;

	if (request_decode(p, n, &id, &rq) < 0) {
		respond_text(a, id, "invalid request", "garbled");
		return;
	}
	switch (rq.op) {
	case FS_STAT:       fs_stat(a, id, rq.path); break;
	case FS_LIST:       fs_list(a, id, rq.path); break;
	case FS_MKDIR:      fs_mkdir(a, id, rq.path); break;
	case FS_REMOVE:     fs_remove(a, id, rq.path); break;
	case FS_REMOVE_DIR: fs_remove_dir(a, id, rq.path); break;
	case FS_COPY:       fs_copy(a, id, rq.src, rq.dst); break;
	case FS_RENAME:     fs_rename(a, id, rq.src, rq.dst); break;
	default:
		respond_text(a, id, "invalid request",
			     "operation not supported in this generation");
	}
}

void fs_child_stream(struct agent *a, const uint8_t *p, size_t n, int ctl,
		     int data)
{
	struct fs_request rq;
	uint32_t id = 0;
	bool clean = false;

	if (request_decode(p, n, &id, &rq) < 0 || clear_nonblock(data) < 0)
		respond_text(a, id, "invalid request", "garbled");
	else if (rq.op == FS_READ)
		clean = child_read(a, id, rq.path, ctl, data);
	else if (prctl(PR_SET_PDEATHSIG, 0) == 0)  /* clean up, even alone */
		clean = child_write(a, id, &rq, ctl, data);
	close(data);  /* a read's end of data, before its response */
	/* 'R': this worker takes requests again (after an error the agent
	 * may have said more than we read: we end instead). */
	if (clean && send(ctl, "R", 1, MSG_NOSIGNAL) != 1)
		clean = false;
	fs_child_send(a, ctl);
	if (!clean)
		_exit(0);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
}
