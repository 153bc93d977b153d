/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ctl_files.c - agentctl's file commands: cp (both ways, -r), ls, stat, mkdir, rm,
 * mv and cat.  The guest is hostile here: names, modes, sizes and texts
 * it sends are checked, sanitized or not trusted, and a download never
 * follows or changes a local path it did not create.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"

/* ------------------------------------------------------------------ */
/* Filesystem requests                                                 */

static void entry_copy(struct entry *e, const struct fs_entry *f)
{
	e->path = xstrndup(f->path ? f->path : "", f->path ? strlen(f->path) : 0);
	snprintf(e->kind, sizeof(e->kind), "%s", f->kind ? f->kind : "other");
	e->size = f->size;
	e->mode = f->mode;
	e->has_modified = f->has_modified;
	e->modified = f->modified;
}

static void entries_free(struct entry *e, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(e[i].path);
	free(e);
}

struct fs_result {
	bool ok;
	char error[512];
	struct entry stat;      /* Stat */
	struct entry *list;     /* List */
	size_t nlist;
};

/* Anything but the answer on a request's id breaks the protocol: a guest
 * must not keep agentctl busy with frames that never end the request. */
static void fs_unexpected(const struct msg *m)
{
	if (m->type == MSG_ERROR)
		fail("the agent refused the request: %s", m->u.core_error.message ?
		     m->u.core_error.message : "core.error");
	fail("the agent sent %s in answer to a file request", msg_type_name(m->type));
}

/* Send one request and wait for its response; entries are copied out.
 * A Stat or List answered without its entry or listing fails. */
static void fs_call(struct conn *c, const struct fs_request *req, struct fs_result *r)
{
	struct msg m = { .type = MSG_FS_REQUEST, .gen = PROTO_GEN_SEED };
	uint32_t id = conn_new_id(c);
	const struct fs_response *fr;

	m.u.fs_request = *req;
	conn_send(c, id, &m);
	conn_wait_msg(c, id, &m);
	if (m.type != MSG_FS_RESPONSE)
		fs_unexpected(&m);
	fr = &m.u.fs_response;
	memset(r, 0, sizeof(*r));
	r->ok = fr->ok;
	snprintf(r->error, sizeof(r->error), "%s",
		 fr->error ? fr->error : "operation failed");
	if (fr->ok && ((req->op == FS_STAT && fr->data_kind != FS_DATA_STAT) ||
		       (req->op == FS_LIST && fr->data_kind != FS_DATA_LIST))) {
		r->ok = false;
		snprintf(r->error, sizeof(r->error), "the agent answered without the %s",
			 req->op == FS_STAT ? "entry" : "listing");
	}
	if (fr->ok && fr->data_kind == FS_DATA_STAT)
		entry_copy(&r->stat, &fr->stat);
	if (fr->ok && fr->data_kind == FS_DATA_LIST) {
		r->list = xmalloc(fr->nlist * sizeof(*r->list));
		for (size_t i = 0; i < fr->nlist; i++)
			entry_copy(&r->list[i], &fr->list[i]);
		r->nlist = fr->nlist;
	}
}

static void fs_result_free(struct fs_result *r)
{
	free(r->stat.path);
	entries_free(r->list, r->nlist);
	r->stat.path = NULL;
	r->list = NULL;
	r->nlist = 0;
}

/* Stat a guest path: true and *e filled when it exists. */
bool guest_stat(struct conn *c, const char *path, struct entry *e)
{
	struct fs_request req = { .op = FS_STAT, .path = path };
	struct fs_result r;

	fs_call(c, &req, &r);
	if (!r.ok)
		return false;
	*e = r.stat;
	return true;
}

bool guest_is_dir(struct conn *c, const char *path)
{
	struct entry e;
	bool dir;

	if (!guest_stat(c, path, &e))
		return false;
	dir = !strcmp(e.kind, "dir");
	free(e.path);
	return dir;
}

/* ------------------------------------------------------------------ */
/* Progress bar (stderr, only when it is a terminal)                  */

struct progress {
	bool on;
	char name[25];          /* sanitized after cutting: it may come from the guest */
	uint64_t total, done;
	uint64_t t0, last;
};

static void progress_start(struct progress *pg, bool quiet, const char *name, uint64_t total)
{
	memset(pg, 0, sizeof(*pg));
	pg->on = !quiet && total >= PROGRESS_MIN && isatty(STDERR_FILENO);
	safe(name, pg->name, sizeof(pg->name));
	pg->total = total;
	pg->t0 = pg->last = now_ms();
}

static void progress_draw(struct progress *pg, bool final)
{
	uint64_t now = now_ms();
	double secs, rate;
	unsigned pct, bar, i;
	char line[160], bars[31];

	if (!pg->on || (!final && now - pg->last < 200))
		return;
	pg->last = now;
	secs = (double)(now - pg->t0) / 1000;
	rate = secs > 0 ? (double)pg->done / secs / 1048576 : 0;
	pct = pg->total ? (unsigned)(pg->done * 100 / pg->total) : 100;
	if (pct > 100)
		pct = 100;
	bar = pct * 30 / 100;
	for (i = 0; i < 30; i++)
		bars[i] = i < bar ? '#' : '.';
	bars[30] = 0;
	snprintf(line, sizeof(line), "\r%-24s [%s] %3u%% %8.1f MiB %7.1f MiB/s",
		 pg->name, bars, pct, (double)pg->done / 1048576, rate);
	fputs(line, stderr);
	if (final)
		fputc('\n', stderr);
	fflush(stderr);
}

static void progress_add(struct progress *pg, size_t n)
{
	pg->done += n;
	progress_draw(pg, false);
}

/* ------------------------------------------------------------------ */
/* Streaming files                                                     */

/*
 * Upload fd to the guest path.  The agent writes into a temporary file
 * and renames it only after the empty end-of-stream chunk, so an upload
 * that fails here is abandoned by exiting without that chunk: the agent
 * discards the temporary file when the connection goes away.
 */
static int put_stream(struct conn *c, int fd, const char *gpath, bool has_mode,
		      uint32_t mode, struct progress *pg, char *err, size_t errlen)
{
	struct msg m = { .type = MSG_FS_REQUEST, .gen = PROTO_GEN_SEED };
	uint32_t id = conn_new_id(c), rid;
	uint8_t *buf = xmalloc(DATA_CHUNK);
	uint64_t since = now_ms();
	bool eof = false;

	m.u.fs_request.op = FS_WRITE;
	m.u.fs_request.path = gpath;
	m.u.fs_request.has_mode = has_mode;
	m.u.fs_request.mode = mode;
	conn_send(c, id, &m);
	for (;;) {
		struct pollfd p[2];
		int n = 1;

		while (conn_next(c, &rid, &m)) {
			if (rid != id)
				continue;
			if (m.type != MSG_FS_RESPONSE)
				fs_unexpected(&m);
			free(buf);
			snprintf(err, errlen, "%s", m.u.fs_response.error ?
				 m.u.fs_response.error : "write failed");
			if (!eof) {
				/* Early failure: end the stream so the agent
				 * forgets the id. */
				struct msg d = { .type = MSG_FS_DATA, .gen = PROTO_GEN_SEED };

				conn_send(c, id, &d);
				conn_flush(c, 2000);
			}
			return m.u.fs_response.ok ? 0 : -1;
		}
		if (c->eof)
			fail("connection to the agent lost during upload of %s", gpath);
		if (!eof && conn_pending(c) < OUT_SOFT) {
			p[1].fd = fd;
			p[1].events = POLLIN;
			p[1].revents = 0;
			n = 2;
		}
		if (!eof && !conn_pending(c))
			since = now_ms();  /* waiting for local input, not the agent */
		conn_poll(c, p, n, conn_idle_left(c, since));
		if (n == 2 && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
			ssize_t r = read(fd, buf, DATA_CHUNK);
			struct msg d = { .type = MSG_FS_DATA, .gen = PROTO_GEN_SEED };

			if (r < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (r < 0)
				fail("read: %s (upload of %s abandoned)", strerror(errno), gpath);
			if (r == 0)
				eof = true;
			d.u.data.data.p = buf;
			d.u.data.data.n = (size_t)r;
			conn_send(c, id, &d);
			progress_add(pg, (size_t)r);
		}
	}
}

/* Download a guest file into fd. */
static int get_stream(struct conn *c, const char *gpath, int fd, const char *what,
		      struct progress *pg, char *err, size_t errlen)
{
	struct msg m = { .type = MSG_FS_REQUEST, .gen = PROTO_GEN_SEED };
	uint32_t id = conn_new_id(c);

	m.u.fs_request.op = FS_READ;
	m.u.fs_request.path = gpath;
	conn_send(c, id, &m);
	for (;;) {
		conn_wait_msg(c, id, &m);
		if (m.type == MSG_FS_DATA) {
			if (write_all(fd, m.u.data.data.p, m.u.data.data.n) < 0) {
				if (errno == EPIPE)
					exit(141);
				fail("write %s: %s", what, strerror(errno));
			}
			progress_add(pg, m.u.data.data.n);
		} else if (m.type == MSG_FS_RESPONSE) {
			snprintf(err, errlen, "%s", m.u.fs_response.error ?
				 m.u.fs_response.error : "read failed");
			return m.u.fs_response.ok ? 0 : -1;
		} else {
			fs_unexpected(&m);
		}
	}
}


static const char usage_cp[] =
"usage: agentctl cp [-r] [-p] [-q] SRC DST\n"
"\n"
"Copy between host and guest.  A guest path is written :/path or guest:/path;\n"
"- is stdin (as SRC) or stdout (as DST).  If DST is an existing directory (or\n"
"ends in /) the file keeps its name inside it.  Uploads keep the local\n"
"permission bits and replace the guest file atomically.  Downloads replace\n"
"the local file atomically (temporary file + rename; nothing is left behind\n"
"when the copy fails or is interrupted) with the guest's permission bits\n"
"less setuid/setgid and less the umask.  Both sides in the guest copies\n"
"inside the guest.\n"
"\n"
"  -r, -R, --recursive\n"
"                   copy directories (symlinks and special files are skipped\n"
"                   with a warning: the seed protocol cannot create them).\n"
"                   Downloading, an existing local directory is merged into\n"
"                   (its mode is kept); an existing file, symlink or special\n"
"                   file where the guest has a directory, or a directory,\n"
"                   symlink or special file where it has a file, is an error\n"
"                   and left alone.  Local symlinks are never followed.\n"
"  -p, --preserve   downloads keep the guest's mode bits exactly (setuid and\n"
"                   setgid included, no umask)\n"
"  -q, --quiet      no progress bar (shown on a terminal for files >= 8 MiB)\n"
"\n"
"Exit status: 0, 1 when an operation failed, 125 on usage or transport errors\n"
"(and when the agent is silent for --idle-timeout).\n";

static const char usage_ls[] =
"usage: agentctl ls [--json] [PATH]\n"
"\n"
"List a guest directory (default /), sorted by name: mode, size, modification\n"
"time, name.  --json prints an array of {path, name, kind, size, mode, perm,\n"
"modified} objects (mode is the full st_mode; modified is Unix seconds or null).\n";

static const char usage_stat[] =
"usage: agentctl stat [--json] PATH...\n"
"\n"
"Show metadata of guest paths (symlinks are not followed).  --json prints one\n"
"object per path, or an array when several paths are given.\n";

static const char usage_mkdir[] =
"usage: agentctl mkdir PATH...\n\nCreate guest directories and their missing parents.\n";
static const char usage_rm[] =
"usage: agentctl rm [-r] PATH...\n\nRemove guest files; -r removes directory trees.\n";
static const char usage_mv[] =
"usage: agentctl mv SRC DST\n\nRename or move a guest path (replaces DST).\n";
static const char usage_cat[] =
"usage: agentctl cat PATH...\n\nWrite guest files to stdout.\n";

/* ------------------------------------------------------------------ */
/* cp                                                                  */

/* ":/p" or "guest:/p" -> "/p"; NULL for a host path. */
static const char *guest_path(const char *arg)
{
	if (arg[0] == ':')
		return arg + 1;
	if (!strncmp(arg, "guest:", 6))
		return arg + 6;
	return NULL;
}

struct cp {
	struct conn *c;
	bool recursive, quiet, preserve;
	mode_t umask;
	int errors;
	size_t held;  /* bytes of the listings of the directories being walked */
};

static void cp_error(struct cp *cp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cp_error(struct cp *cp, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport(fmt, ap);
	va_end(ap);
	cp->errors++;
}

static void cp_put_file(struct cp *cp, const char *src, const char *dst)
{
	char err[512];
	struct progress pg;
	struct stat st;
	bool std = !strcmp(src, "-");
	int fd = std ? STDIN_FILENO : open(src, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		cp_error(cp, "open %s: %s", src, strerror(errno));
		return;
	}
	if (fstat(fd, &st) < 0)
		fail("stat %s: %s", src, strerror(errno));
	progress_start(&pg, cp->quiet, base_name(dst),
		       S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0);
	if (put_stream(cp->c, fd, dst, !std, st.st_mode & 07777, &pg, err, sizeof(err)) < 0)
		cp_error(cp, "%s: %s", dst, err);
	else
		progress_draw(&pg, true);
	if (!std)
		close(fd);
}

static void cp_put_tree(struct cp *cp, const char *src, const char *dst, int depth)
{
	struct fs_request mk = { .op = FS_MKDIR, .path = dst };
	struct fs_result r;
	struct dirent *de;
	DIR *d;

	if (depth > WALK_DEPTH) {
		cp_error(cp, "%s: directories nested too deep", src);
		return;
	}
	fs_call(cp->c, &mk, &r);
	if (!r.ok) {
		cp_error(cp, "%s: %s", dst, r.error);
		return;
	}
	d = opendir(src);
	if (!d) {
		cp_error(cp, "opendir %s: %s", src, strerror(errno));
		return;
	}
	while ((de = readdir(d))) {
		char *s, *t;
		struct stat st;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		s = path_join(src, de->d_name);
		t = path_join(dst, de->d_name);
		if (lstat(s, &st) < 0)
			cp_error(cp, "stat %s: %s", s, strerror(errno));
		else if (S_ISDIR(st.st_mode))
			cp_put_tree(cp, s, t, depth + 1);
		else if (S_ISREG(st.st_mode))
			cp_put_file(cp, s, t);
		else
			warn("skipping %s: not a regular file or directory", s);
		free(s);
		free(t);
	}
	closedir(d);
}

/* Upload: host src -> guest dst. */
static void cp_upload(struct cp *cp, const char *src, const char *gdst)
{
	struct stat st;
	char *name, *target;
	size_t n = strlen(gdst);
	bool into = (n && gdst[n - 1] == '/') || guest_is_dir(cp->c, gdst);

	if (strcmp(src, "-") && stat(src, &st) < 0)
		fail("%s: %s", src, strerror(errno));
	if (!strcmp(src, "-")) {
		if (into)
			fail("%s: is a directory (give a file name to copy stdin to)", gdst);
		cp_put_file(cp, src, gdst);
		return;
	}
	name = last_component(src);
	target = into ? path_join(gdst, name) : strdup(gdst);
	if (S_ISDIR(st.st_mode)) {
		if (!cp->recursive)
			fail("%s: is a directory (use -r)", src);
		cp_put_tree(cp, src, target, 0);
	} else {
		cp_put_file(cp, src, target);
	}
	free(name);
	free(target);
}

/*
 * The temporary file of the download in progress.  It holds bytes the
 * guest chose, so it is removed on every way out: the error paths, exit()
 * from fail() (atexit) and SIGINT, SIGTERM and SIGHUP (their handler).
 * Fatal signals are blocked while it is created or renamed so that the
 * handler never sees half of that.
 */
static struct {
	volatile sig_atomic_t active;
	int dirfd;
	char name[NAME_MAX + 1];
} tmp_file;

static void tmp_remove(void)
{
	if (tmp_file.active) {
		unlinkat(tmp_file.dirfd, tmp_file.name, 0);
		tmp_file.active = 0;
	}
}

static void tmp_on_signal(int sig)
{
	tmp_remove();
	signal(sig, SIG_DFL);
	raise(sig);  /* delivered on return: end as the signal says */
}

static void fatal_signals(int how)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGQUIT);
	sigprocmask(how, &set, NULL);
}

static void tmp_guard_install(void)
{
	struct sigaction sa = { .sa_handler = tmp_on_signal };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGQUIT, &sa, NULL);
	atexit(tmp_remove);
}

/* Create ".NAME.agentctl-XXXXXX" in dirfd, never through a symlink. */
static int tmp_create(int dirfd, const char *name)
{
	int fd = -1;

	for (unsigned i = 0; i < 100 && fd < 0; i++) {
		unsigned r = (unsigned)(now_ms() * 2654435761u) ^ ((unsigned)getpid() << 8) ^ i * 40503u;

		fatal_signals(SIG_BLOCK);
		snprintf(tmp_file.name, sizeof(tmp_file.name), ".%.200s.agentctl-%06x",
			 name, r & 0xffffff);
		fd = openat(dirfd, tmp_file.name,
			    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd >= 0) {
			tmp_file.dirfd = dirfd;
			tmp_file.active = 1;
		}
		fatal_signals(SIG_UNBLOCK);
		if (fd < 0 && errno != EEXIST)
			return -1;
	}
	return fd;
}

static void tmp_discard(void)
{
	fatal_signals(SIG_BLOCK);
	tmp_remove();
	fatal_signals(SIG_UNBLOCK);
}

static int tmp_commit(const char *name)
{
	int r;

	fatal_signals(SIG_BLOCK);
	r = renameat(tmp_file.dirfd, tmp_file.name, tmp_file.dirfd, name);
	if (r == 0)
		tmp_file.active = 0;
	fatal_signals(SIG_UNBLOCK);
	return r;
}

/* The mode a downloaded file or new directory gets: the guest's bits
 * without setuid and setgid, less the umask, unless -p was given. */
static mode_t local_mode(const struct cp *cp, uint32_t guest, bool dir)
{
	if (cp->preserve)
		return guest & 07777;
	return guest & (dir ? 01777u : 0777u) & ~cp->umask;
}

/*
 * Write a guest file to name in dirfd through a temporary file in the
 * same directory, renamed at the end, so an aborted copy leaves nothing
 * and a reader of the old file keeps it whole.  dst is the path shown in
 * messages.  Only a destination the user named (top) that is a device or
 * a FIFO is written in place; an existing directory is refused.
 */
static void cp_get_file(struct cp *cp, const char *src, int dirfd, const char *name,
			const char *dst, uint32_t mode, uint64_t size, bool top)
{
	char err[512];
	struct progress pg;
	struct stat st;
	bool in_place = false;
	int fd;

	progress_start(&pg, cp->quiet, base_name(src), size);
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		if (S_ISDIR(st.st_mode)) {
			cp_error(cp, "%s: cannot overwrite directory with non-directory", dst);
			return;
		}
		if (!S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode)) {
			if (!top) {
				cp_error(cp, "%s: not replacing a special file", dst);
				return;
			}
			in_place = true;
		} else if (S_ISLNK(st.st_mode) && !top) {
			cp_error(cp, "%s: not replacing a symbolic link", dst);
			return;
		}
	}
	if (in_place)
		fd = openat(dirfd, name, O_WRONLY | O_TRUNC | O_NOFOLLOW | O_CLOEXEC);
	else
		fd = tmp_create(dirfd, name);
	if (fd < 0) {
		cp_error(cp, "open %s: %s", dst, strerror(errno));
		return;
	}
	if (get_stream(cp->c, src, fd, dst, &pg, err, sizeof(err)) < 0) {
		cp_error(cp, "%s: %s", src, err);
		tmp_discard();
	} else if (!in_place && (fchmod(fd, local_mode(cp, mode, false)) < 0 ||
				 tmp_commit(name) < 0)) {
		cp_error(cp, "%s: %s", dst, strerror(errno));
		tmp_discard();
	} else {
		progress_draw(&pg, true);
	}
	close(fd);
}

/* The entry name of a listed path, or NULL when a (hostile) agent
 * returned something that is not one component below dir. */
static const char *listed_name(const char *dir, const char *path)
{
	size_t n = strlen(dir);
	const char *name;

	while (n > 1 && dir[n - 1] == '/')
		n--;
	if (strncmp(path, dir, n))
		return NULL;
	name = path + n;
	if (*name == '/')
		name++;
	else if (!(n == 1 && dir[0] == '/'))
		return NULL;
	if (!*name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
		return NULL;
	return name;
}

/*
 * Open the directory name in pfd for a recursive download, creating it
 * if missing; *created says whether agentctl made it.  An existing
 * directory is merged into, as cp -r does; anything else there (a file,
 * a symlink, even one to a directory) is refused and never followed.
 */
static int cp_open_dir(struct cp *cp, int pfd, const char *name, const char *dst,
		       bool *created)
{
	int fd;

	*created = mkdirat(pfd, name, 0700) == 0;
	if (!*created && errno != EEXIST) {
		cp_error(cp, "mkdir %s: %s", dst, strerror(errno));
		return -1;
	}
	fd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && (errno == ENOTDIR || errno == ELOOP))
		cp_error(cp, "%s: cannot overwrite non-directory with directory", dst);
	else if (fd < 0)
		cp_error(cp, "open %s: %s", dst, strerror(errno));
	return fd;
}

static void cp_get_tree(struct cp *cp, const char *src, int pfd, const char *name,
			const char *dst, uint32_t mode, int depth)
{
	struct fs_request ls = { .op = FS_LIST, .path = src };
	struct fs_result r;
	size_t bytes = 0;
	bool created;
	int fd;

	if (depth > WALK_DEPTH) {
		cp_error(cp, "%s: directories nested too deep", src);
		return;
	}
	fd = cp_open_dir(cp, pfd, name, dst, &created);
	if (fd < 0)
		return;
	fs_call(cp->c, &ls, &r);
	if (!r.ok) {
		cp_error(cp, "%s: %s", src, r.error);
		close(fd);
		return;
	}
	/* Each level keeps its listing while it descends: cap the sum so a
	 * guest cannot make agentctl hold huge listings 64 levels deep. */
	for (size_t i = 0; i < r.nlist; i++)
		bytes += sizeof(r.list[i]) + strlen(r.list[i].path) + 1;
	if (cp->held + bytes > WALK_HELD_MAX) {
		cp_error(cp, "%s: directory listings too large to walk", src);
		fs_result_free(&r);
		close(fd);
		return;
	}
	cp->held += bytes;
	for (size_t i = 0; i < r.nlist; i++) {
		const struct entry *e = &r.list[i];
		const char *n = listed_name(src, e->path);
		char *t;

		if (!n) {
			cp_error(cp, "%s: the agent listed a bad entry \"%s\"", src, e->path);
			continue;
		}
		t = path_join(dst, n);
		if (!strcmp(e->kind, "dir"))
			cp_get_tree(cp, e->path, fd, n, t, e->mode, depth + 1);
		else if (!strcmp(e->kind, "file"))
			cp_get_file(cp, e->path, fd, n, t, e->mode, e->size, false);
		else
			warn("skipping %s: a %s", e->path, e->kind);
		free(t);
	}
	cp->held -= bytes;
	fs_result_free(&r);
	/* Only a directory agentctl made gets the guest's mode. */
	if (created && fchmod(fd, local_mode(cp, mode, true)) < 0)
		cp_error(cp, "chmod %s: %s", dst, strerror(errno));
	close(fd);
}

/* Download: guest src -> host dst.  The host path the user gave is
 * resolved as usual; below it nothing the guest names is followed. */
static void cp_download(struct cp *cp, const char *gsrc, const char *dst)
{
	struct entry e;
	struct stat st;
	char *name, *parent, *target;
	size_t n = strlen(dst);
	bool into;
	int pfd;

	if (!guest_stat(cp->c, gsrc, &e)) {
		struct fs_request req = { .op = FS_STAT, .path = gsrc };
		struct fs_result r;

		fs_call(cp->c, &req, &r);
		cp_error(cp, "%s: %s", gsrc, r.error);
		return;
	}
	if (!strcmp(dst, "-")) {
		char err[512];
		struct progress pg;

		if (!strcmp(e.kind, "dir"))
			fail("%s: is a directory (cannot copy it to stdout)", gsrc);
		progress_start(&pg, cp->quiet, base_name(gsrc), e.size);
		if (get_stream(cp->c, gsrc, STDOUT_FILENO, "stdout", &pg, err, sizeof(err)) < 0)
			cp_error(cp, "%s: %s", gsrc, err);
		free(e.path);
		return;
	}
	if (!strcmp(e.kind, "dir") && !cp->recursive)
		fail("%s: is a directory (use -r)", gsrc);
	into = (n && dst[n - 1] == '/') || (stat(dst, &st) == 0 && S_ISDIR(st.st_mode));
	if (into) {
		name = last_component(gsrc);
		parent = strdup(dst);
	} else {
		name = last_component(dst);
		parent = xstrndup(dst, (size_t)(base_name(dst) - dst));
	}
	if (!strcmp(name, "/") || !strcmp(name, ".") || !strcmp(name, ".."))
		fail("%s: name a new destination to copy %s to", dst, gsrc);
	target = into ? path_join(dst, name) : strdup(dst);
	pfd = open(*parent ? parent : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (pfd < 0)
		cp_error(cp, "%s: %s", target, strerror(errno));
	else if (!strcmp(e.kind, "dir"))
		cp_get_tree(cp, gsrc, pfd, name, target, e.mode, 0);
	else
		cp_get_file(cp, gsrc, pfd, name, target, e.mode, e.size, true);
	if (pfd >= 0)
		close(pfd);
	free(name);
	free(parent);
	free(target);
	free(e.path);
}

int cmd_cp(struct ctl *x, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "recursive", no_argument, NULL, 'r' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "preserve", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct cp cp = { .c = &x->conn };
	const char *gs, *gd;
	int c;

	while ((c = sub_getopt(argc, argv, "+rRqph", lo, usage_cp)) != -1) {
		if (c == 'r' || c == 'R')
			cp.recursive = true;
		else if (c == 'q')
			cp.quiet = true;
		else if (c == 'p')
			cp.preserve = true;
	}
	cp.umask = umask(0);
	umask(cp.umask);
	tmp_guard_install();
	if (argc - optind != 2)
		usage_error(usage_cp, "cp needs SRC and DST");
	gs = guest_path(argv[optind]);
	gd = guest_path(argv[optind + 1]);
	if (!gs && !gd)
		usage_error(usage_cp, "one of SRC and DST must be a guest path (:/path)");
	ctl_connect(x);
	if (gs && gd) {
		struct fs_request req = { .op = FS_COPY, .src = gs, .dst = gd };
		struct fs_result r;

		fs_call(&x->conn, &req, &r);
		if (!r.ok)
			cp_error(&cp, "%s: %s", gs, r.error);
	} else if (gd) {
		cp_upload(&cp, argv[optind], gd);
	} else {
		cp_download(&cp, gs, argv[optind + 1]);
	}
	return cp.errors ? EXIT_FAILED : 0;
}


/* ------------------------------------------------------------------ */
/* ls, stat and the other thin commands                                */

static void json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch < 0x20)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

static void json_entry(const struct entry *e)
{
	fputs("{\"path\": ", stdout);
	json_string(e->path);
	fputs(", \"name\": ", stdout);
	json_string(base_name(e->path));
	fputs(", \"kind\": ", stdout);
	json_string(e->kind);
	printf(", \"size\": %llu, \"mode\": %u, \"perm\": \"%04o\", \"modified\": ",
	       (unsigned long long)e->size, e->mode, e->mode & 07777);
	if (e->has_modified)
		printf("%lld}", (long long)e->modified);
	else
		fputs("null}", stdout);
}

static void mode_string(uint32_t mode, const char *kind, char out[11])
{
	static const char rwx[] = "rwxrwxrwx";

	out[0] = !strcmp(kind, "dir") ? 'd' : !strcmp(kind, "symlink") ? 'l' :
		 !strcmp(kind, "file") ? '-' : '?';
	for (int i = 0; i < 9; i++)
		out[i + 1] = (mode & (0400u >> i)) ? rwx[i] : '-';
	if (mode & 04000)
		out[3] = out[3] == 'x' ? 's' : 'S';
	if (mode & 02000)
		out[6] = out[6] == 'x' ? 's' : 'S';
	if (mode & 01000)
		out[9] = out[9] == 'x' ? 't' : 'T';
	out[10] = 0;
}

static void human_entry(const struct entry *e, const char *name)
{
	char ms[11], when[32] = "-", *shown = xstrndup(name, strlen(name));

	mode_string(e->mode, e->kind, ms);
	if (e->has_modified) {
		time_t t = (time_t)e->modified;
		struct tm tm;

		if (localtime_r(&t, &tm))
			strftime(when, sizeof(when), "%Y-%m-%d %H:%M", &tm);
	}
	sanitize(shown);
	printf("%s %12llu %-16s %s\n", ms, (unsigned long long)e->size, when, shown);
	free(shown);
}

static int entry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct entry *)a)->path, ((const struct entry *)b)->path);
}

int cmd_ls(struct ctl *x, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct fs_request req = { .op = FS_LIST };
	struct fs_result r;
	int c;

	while ((c = sub_getopt(argc, argv, "+h", lo, usage_ls)) != -1)
		x->json = true;
	if (argc - optind > 1)
		usage_error(usage_ls, "ls takes one path");
	req.path = argc > optind ? argv[optind] : "/";
	ctl_connect(x);
	fs_call(&x->conn, &req, &r);
	if (!r.ok) {
		/* A file lists as itself, like ls(1). */
		struct entry e;

		if (!guest_stat(&x->conn, req.path, &e) || !strcmp(e.kind, "dir")) {
			warn("%s: %s", req.path, r.error);
			return EXIT_FAILED;
		}
		r.list = xmalloc(sizeof(*r.list));
		r.list[0] = e;
		r.nlist = 1;
	}
	qsort(r.list, r.nlist, sizeof(*r.list), entry_cmp);
	if (x->json)
		putchar('[');
	for (size_t i = 0; i < r.nlist; i++) {
		if (x->json) {
			fputs(i ? ",\n " : "", stdout);
			json_entry(&r.list[i]);
		} else {
			human_entry(&r.list[i], base_name(r.list[i].path));
		}
	}
	if (x->json)
		puts("]");
	fs_result_free(&r);
	return 0;
}

int cmd_stat(struct ctl *x, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	int c, status = 0, i, n;
	bool first = true;

	while ((c = sub_getopt(argc, argv, "+h", lo, usage_stat)) != -1)
		x->json = true;
	n = argc - optind;
	if (n < 1)
		usage_error(usage_stat, "stat needs a path");
	ctl_connect(x);
	if (x->json && n > 1)
		putchar('[');
	for (i = optind; i < argc; i++) {
		struct fs_request req = { .op = FS_STAT, .path = argv[i] };
		struct fs_result r;

		fs_call(&x->conn, &req, &r);
		if (!r.ok) {
			warn("%s: %s", argv[i], r.error);
			status = EXIT_FAILED;
			continue;
		}
		if (x->json) {
			fputs(first ? "" : ",\n ", stdout);
			json_entry(&r.stat);
			if (n == 1)
				putchar('\n');
		} else {
			human_entry(&r.stat, argv[i]);  /* the path asked for */
		}
		first = false;
		fs_result_free(&r);
	}
	if (x->json && n > 1)
		puts("]");
	return status;
}

/* mkdir, rm and mv: one request per path, errors reported per path. */
static int simple_ops(struct ctl *x, enum fs_op op, char **paths, int n)
{
	int status = 0;

	ctl_connect(x);
	for (int i = 0; i < n; i++) {
		struct fs_request req = { .op = op, .path = paths[i] };
		struct fs_result r;

		fs_call(&x->conn, &req, &r);
		if (!r.ok) {
			warn("%s: %s", paths[i], r.error);
			status = EXIT_FAILED;
		}
		fs_result_free(&r);
	}
	return status;
}

int cmd_mkdir(struct ctl *x, int argc, char **argv)
{
	static const struct option lo[] = { { "help", no_argument, NULL, 'h' }, { 0 } };

	while (sub_getopt(argc, argv, "+ph", lo, usage_mkdir) != -1)
		;  /* -p is accepted: parents are always created */
	if (argc - optind < 1)
		usage_error(usage_mkdir, "mkdir needs a path");
	return simple_ops(x, FS_MKDIR, argv + optind, argc - optind);
}

int cmd_rm(struct ctl *x, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "recursive", no_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	bool rec = false;
	int c;

	while ((c = sub_getopt(argc, argv, "+rRfh", lo, usage_rm)) != -1)
		if (c == 'r' || c == 'R')
			rec = true;
	if (argc - optind < 1)
		usage_error(usage_rm, "rm needs a path");
	return simple_ops(x, rec ? FS_REMOVE_DIR : FS_REMOVE, argv + optind, argc - optind);
}

int cmd_mv(struct ctl *x, int argc, char **argv)
{
	static const struct option lo[] = { { "help", no_argument, NULL, 'h' }, { 0 } };
	struct fs_request req = { .op = FS_RENAME };
	struct fs_result r;

	while (sub_getopt(argc, argv, "+h", lo, usage_mv) != -1)
		;
	if (argc - optind != 2)
		usage_error(usage_mv, "mv needs SRC and DST");
	req.src = argv[optind];
	req.dst = argv[optind + 1];
	ctl_connect(x);
	fs_call(&x->conn, &req, &r);
	if (!r.ok) {
		warn("%s: %s", req.src, r.error);
		return EXIT_FAILED;
	}
	return 0;
}

int cmd_cat(struct ctl *x, int argc, char **argv)
{
	static const struct option lo[] = { { "help", no_argument, NULL, 'h' }, { 0 } };
	struct progress pg = { 0 };
	char err[512];
	int status = 0;

	while (sub_getopt(argc, argv, "+h", lo, usage_cat) != -1)
		;
	if (argc - optind < 1)
		usage_error(usage_cat, "cat needs a path");
	ctl_connect(x);
	for (int i = optind; i < argc; i++) {
		if (get_stream(&x->conn, argv[i], STDOUT_FILENO, "stdout", &pg,
			       err, sizeof(err)) < 0) {
			warn("%s: %s", argv[i], err);
			status = EXIT_FAILED;
		}
	}
	return status;
}
