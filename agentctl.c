/* SPDX-License-Identifier: Apache-2.0 */
/*
 * agentctl.c - the host-side command line for agentd.
 *
 * It connects to the agent port a VMM exposes (a Unix socket such as
 * QEMU's "-chardev socket", a character device, or an inherited fd),
 * waits until the agent serves, and then runs one command: exec, cp,
 * ls, stat, mkdir, rm, mv, cat, ready or shutdown.
 *
 * One poll loop, no threads.  Everything the guest sends is bounded by
 * the frame reader (one maximal frame plus one read chunk) and by a
 * per-frame decode arena; file bytes are streamed chunk by chunk and
 * never buffered whole.  Output to the agent is bounded too: bulk
 * producers (local stdin, local files) only add a chunk while less than
 * OUT_SOFT bytes are waiting for the port.
 *
 * Exit status: the remote status for exec (128+N when the remote process
 * was killed by signal N, 124 on --timeout, 126/127 when the command
 * could not be started); 0/1 for the other commands (1 = the guest
 * refused the operation); 125 for usage, local and transport errors.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"

#define EXIT_FAILED    1
#define EXIT_TIMEOUT   124
#define EXIT_TOOL      125
#define EXIT_NOEXEC    126
#define EXIT_NOTFOUND  127

#define OUT_SOFT     (1u << 20)   /* bulk producers pause above this */
#define OUT_CAP      (FRAME_WIRE_MAX + 4u * OUT_SOFT)
#define DATA_CHUNK   (1u << 20)   /* stdin and file bytes per frame */
#define ARENA_LIMIT  (32u << 20)  /* decoded values of one frame */
#define WALK_DEPTH   64           /* cp -r directory depth */
#define WALK_HELD_MAX (64u << 20) /* listings cp -r holds while descending */
#define PROGRESS_MIN (8ull << 20) /* files below this get no progress bar */
#define KILL_GRACE_MS 10000       /* after --timeout's SIGKILL */

static const char *prog = "agentctl";

/* ------------------------------------------------------------------ */
/* Errors and small helpers                                            */

/*
 * Replace what a terminal would act on with '?', in place, as GNU ls does
 * on a terminal: C0 controls, DEL, C1 controls (U+0080-U+009F) and bytes
 * that are not valid UTF-8 (a terminal in an 8-bit mode reads a lone 0x9b
 * as CSI).  Guest names and error texts go through this before they reach
 * a human; --json output escapes them its own way.
 */
static size_t utf8_len(const unsigned char *s)
{
	unsigned char c = s[0];
	size_t n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;

	if (n == 0 || c > 0xf4)
		return 0;
	for (size_t i = 1; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0) ||
	    (c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90))
		return 0;  /* overlong, surrogate or beyond U+10FFFF */
	if (c == 0xc2 && s[1] < 0xa0)
		return 0;  /* a C1 control */
	return n;
}

static void sanitize(char *s)
{
	unsigned char *r = (unsigned char *)s, *w = r;

	while (*r) {
		size_t n = *r < 0x80 ? 1 : utf8_len(r);

		if (n == 0 || *r < 0x20 || *r == 0x7f) {
			*w++ = '?';
			/* a C1 control is two bytes, each shown once as one '?' */
			r += (r[0] == 0xc2 && r[1] >= 0x80 && r[1] < 0xa0) ? 2 : 1;
			continue;
		}
		memmove(w, r, n);
		w += n;
		r += n;
	}
	*w = 0;
}

/* A sanitized copy of s in buf (truncated to fit). */
static const char *safe(const char *s, char *buf, size_t n)
{
	snprintf(buf, n, "%s", s);
	sanitize(buf);
	return buf;
}

static void vreport(const char *fmt, va_list ap)
{
	char buf[2048];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	sanitize(buf);
	fprintf(stderr, "%s: %s\n", prog, buf);
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport(fmt, ap);
	va_end(ap);
	exit(EXIT_TOOL);
}

static void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport(fmt, ap);
	va_end(ap);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		fail("out of memory");
	return p;
}

static char *xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);

	memcpy(p, s, n);
	p[n] = 0;
	return p;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Write everything, blocking; -1 with errno on failure. */
static int write_all(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;

	while (n) {
		ssize_t w = write(fd, b, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN) {
			struct pollfd pfd = { .fd = fd, .events = POLLOUT };

			poll(&pfd, 1, -1);
			continue;
		}
		if (w <= 0)
			return -1;
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

/* "30", "30s", "500ms", "2m", "1h", "1.5s" -> milliseconds; -1 if bad. */
static int64_t parse_duration(const char *s)
{
	char *end;
	double v, mul = 1000;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || v < 0)
		return -1;
	if (!strcmp(end, "ms"))
		mul = 1;
	else if (!strcmp(end, "") || !strcmp(end, "s"))
		mul = 1000;
	else if (!strcmp(end, "m"))
		mul = 60000;
	else if (!strcmp(end, "h"))
		mul = 3600000;
	else
		return -1;
	v *= mul;
	if (v > 1e15)
		return -1;
	return (int64_t)v;
}

static const char *base_name(const char *p)
{
	size_t n = strlen(p);
	const char *s;

	while (n > 1 && p[n - 1] == '/')
		n--;
	for (s = p + n; s > p && s[-1] != '/'; s--)
		;
	return s;
}

/* a + "/" + b without doubling a trailing slash; caller frees. */
static char *path_join(const char *a, const char *b)
{
	size_t na = strlen(a), nb = strlen(b);
	bool slash = na && a[na - 1] == '/';
	char *p = xmalloc(na + nb + 2);

	memcpy(p, a, na);
	if (!slash)
		p[na++] = '/';
	memcpy(p + na, b, nb + 1);
	return p;
}

/* The last component of p without trailing slashes; caller frees. */
static char *last_component(const char *p)
{
	const char *b = base_name(p);
	size_t n = strlen(b);

	while (n > 1 && b[n - 1] == '/')
		n--;
	return xstrndup(b, n);
}

/* ------------------------------------------------------------------ */
/* The connection to the agent                                         */

struct conn {
	int fd;
	bool eof;
	struct frame_reader in;
	struct cbor_out out;   /* frames waiting for the port */
	size_t out_head;       /* first unwritten byte of out.buf */
	struct arena arena;    /* decoded values of the current frame */
	uint32_t next_id;
	uint8_t gen;           /* 1, or 7 with --g7: written as v on every frame */
	bool have_ready;
	struct ready ready;    /* agent_version is not kept */
	int64_t idle_ms;       /* --idle-timeout for file operations; 0 = none */
	uint64_t active;       /* when a message was last queued or bytes left */
};

static size_t conn_pending(const struct conn *c)
{
	return c->out.len - c->out_head;
}

static uint32_t conn_new_id(struct conn *c)
{
	uint32_t id = c->next_id++;

	if (c->next_id == 0 || c->next_id > 0x7fffffff)
		c->next_id = 1;
	return id;
}

static void conn_compact(struct conn *c)
{
	size_t pending = conn_pending(c);

	if (c->out_head == 0)
		return;
	memmove(c->out.buf, c->out.buf + c->out_head, pending);
	c->out.len = pending;
	c->out_head = 0;
}

/* Queue one message.  Producers keep the queue under OUT_SOFT plus one
 * chunk, so a failure here means the message itself is too large. */
static void conn_send(struct conn *c, uint32_t id, const struct msg *m)
{
	c->active = now_ms();
	if (c->out_head && c->out_head >= conn_pending(c))
		conn_compact(c);
	c->out.overflow = false;
	if (frame_encode_msg(&c->out, id, c->gen, m) == 0)
		return;
	conn_compact(c);
	c->out.overflow = false;
	if (frame_encode_msg(&c->out, id, c->gen, m) < 0)
		fail("%s: message does not fit in one frame (4 MiB)",
		     msg_type_name(m->type));
}

static void conn_send_shutdown(struct conn *c)
{
	conn_compact(c);
	c->out.overflow = false;
	/* Seed hosts send an empty byte string, current ones CBOR null. */
	if (frame_encode_raw(&c->out, 0, FLAG_SHUTDOWN, c->gen, "core.shutdown",
			     c->gen >= PROTO_GEN_CURRENT ? "\xf6" : "",
			     c->gen >= PROTO_GEN_CURRENT ? 1 : 0) < 0)
		fail("cannot encode core.shutdown");
}

static void conn_write(struct conn *c)
{
	ssize_t w = write(c->fd, c->out.buf + c->out_head, conn_pending(c));

	if (w > 0) {
		c->active = now_ms();
		c->out_head += (size_t)w;
		if (c->out_head == c->out.len)
			c->out_head = c->out.len = 0;
	} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
		/* The agent is gone; what is queued can never be sent. */
		c->eof = true;
		c->out_head = c->out.len = 0;
	}
}

static void conn_read(struct conn *c)
{
	size_t room;
	uint8_t *p = frame_reader_space(&c->in, &room);
	ssize_t r;

	if (!p || room == 0)
		return;
	r = read(c->fd, p, room);
	if (r > 0)
		frame_reader_commit(&c->in, (size_t)r);
	else if (r == 0 || (errno != EAGAIN && errno != EINTR))
		c->eof = true;
}

/*
 * Wait for the port and the caller's fds.  fds[0] is the port's slot and
 * is filled in here; the caller handles the revents of fds[1..n-1] and
 * then takes every complete frame with conn_next() before polling again.
 */
static int conn_poll(struct conn *c, struct pollfd *fds, int n, int timeout_ms)
{
	int r;

	fds[0].fd = c->fd;
	fds[0].events = (c->eof ? 0 : POLLIN) | (conn_pending(c) ? POLLOUT : 0);
	fds[0].revents = 0;
	if (c->eof)
		fds[0].fd = -1;
	r = poll(fds, (nfds_t)n, timeout_ms);
	if (r < 0) {
		if (errno == EINTR)
			return 0;
		fail("poll: %s", strerror(errno));
	}
	if (fds[0].revents & POLLOUT)
		conn_write(c);
	if (fds[0].revents & (POLLIN | POLLHUP | POLLERR))
		conn_read(c);
	if (fds[0].revents & POLLNVAL)
		fail("the agent fd is not open");
	return r;
}

/* Push what is queued out, for at most timeout_ms. */
static void conn_flush(struct conn *c, int timeout_ms)
{
	uint64_t end = now_ms() + (uint64_t)timeout_ms;

	while (conn_pending(c) && !c->eof && now_ms() < end) {
		struct pollfd p = { .fd = c->fd, .events = POLLOUT };

		if (poll(&p, 1, (int)(end - now_ms())) > 0)
			conn_write(c);
	}
}

/*
 * Next message from the agent: 1 with *id and *m filled (valid until the
 * next call or the next conn_poll), 0 when no complete frame is buffered.
 * Unknown message types are skipped; broken frames are fatal because the
 * stream cannot be trusted after them.
 */
static int conn_next(struct conn *c, uint32_t *id, struct msg *m)
{
	struct frame f;
	struct envelope env;
	struct decode_error err;

	for (;;) {
		enum frame_status st = frame_next(&c->in, &f);

		arena_reset(&c->arena);
		if (st == FRAME_NEED_MORE)
			return 0;
		if (st == FRAME_TOO_LARGE)
			fail("the agent sent a frame larger than 4 MiB (len %u)",
			     c->in.last_bad_len);
		if (st == FRAME_TOO_SHORT)
			fail("the agent sent a frame shorter than its header");
		if (envelope_decode_arena(f.body, f.body_len, &env, &c->arena, &err) < 0)
			fail("undecodable frame from the agent: %s", err.msg);
		if (env.type == MSG_UNKNOWN)
			continue;
		memset(m, 0, sizeof(*m));
		if (payload_decode(env.type, env.v >= PROTO_GEN_CURRENT ?
				   PROTO_GEN_CURRENT : PROTO_GEN_SEED,
				   env.payload, m, &c->arena, &err) < 0)
			fail("undecodable %s from the agent: %s",
			     msg_type_name(env.type), err.msg);
		*id = f.id;
		if (m->type == MSG_READY && !c->have_ready) {
			c->have_ready = true;
			c->ready = m->u.ready;
			c->ready.agent_version = NULL;
		}
		return 1;
	}
}

static void conn_init(struct conn *c, int fd, uint8_t gen)
{
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->gen = gen;
	if (frame_reader_init(&c->in) < 0)
		fail("out of memory");
	c->out.buf = xmalloc(OUT_CAP);
	c->out.cap = OUT_CAP;
	arena_init(&c->arena, ARENA_LIMIT);
	/* Ids of an earlier client's exchanges may still be alive in the
	 * agent; start somewhere else so this client never reuses them. */
	c->next_id = (((uint32_t)getpid() << 12) ^ (uint32_t)now_ms()) & 0x0fffffff;
	if (c->next_id == 0)
		c->next_id = 1;
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int connect_unix(const char *path, int64_t timeout_ms)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint64_t end = now_ms() + (uint64_t)timeout_ms;

	if (strlen(path) >= sizeof(sa.sun_path))
		fail("%s: socket path too long", path);
	strcpy(sa.sun_path, path);
	for (;;) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

		if (fd < 0)
			fail("socket: %s", strerror(errno));
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return fd;
		close(fd);
		/* A VMM that is still starting has no socket or no listener yet. */
		if ((errno != ENOENT && errno != ECONNREFUSED) || now_ms() >= end)
			fail("connect %s: %s", path, strerror(errno));
		usleep(50000);
	}
}

static int open_port(const char *path, int64_t timeout_ms)
{
	struct stat st;
	int fd;

	if (stat(path, &st) < 0 && errno != ENOENT)
		fail("%s: %s", path, strerror(errno));
	if (errno == ENOENT || S_ISSOCK(st.st_mode))
		return connect_unix(path, timeout_ms);
	if (!S_ISCHR(st.st_mode) && !S_ISFIFO(st.st_mode))
		fail("%s: not a socket or a character device", path);
	fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		fail("open %s: %s", path, strerror(errno));
	return fd;
}

/*
 * Wait until the agent serves.  core.ready is sent once per boot, to the
 * first client; a client that connects later (agentctl after `microvm
 * --keep`) never sees it.  So a probe (Stat "/") is queued at once: the
 * agent answers it right after core.ready, or at once when the ready frame
 * went to an earlier client.  Either one means the agent is serving.
 */
static void conn_wait_ready(struct conn *c, int64_t timeout_ms)
{
	struct msg probe = { .type = MSG_FS_REQUEST, .gen = PROTO_GEN_SEED };
	uint32_t probe_id = conn_new_id(c), id;
	uint64_t end = now_ms() + (uint64_t)timeout_ms;
	struct msg m;

	probe.u.fs_request.op = FS_STAT;
	probe.u.fs_request.path = "/";
	conn_send(c, probe_id, &probe);
	for (;;) {
		struct pollfd p[1];
		uint64_t now = now_ms();

		while (conn_next(c, &id, &m))
			if (m.type == MSG_READY ||
			    (m.type == MSG_FS_RESPONSE && id == probe_id))
				return;
		if (c->eof)
			fail("the agent closed the connection before it was ready");
		if (now >= end)
			fail("the agent was not ready within %.1f s",
			     (double)timeout_ms / 1000);
		conn_poll(c, p, 1, (int)(end - now));
	}
}

/*
 * Generation 7 boot (SPEC 12.3): the agent reads a core.bootstrap before
 * anything else, reports core.init.resolved, waits for core.init.ack and
 * then sends core.ready.  The bootstrap is the minimal valid one.
 */
static void conn_boot_g7(struct conn *c, int64_t timeout_ms)
{
	struct msg boot = { .type = MSG_BOOTSTRAP, .gen = PROTO_GEN_CURRENT };
	struct msg ack = { .type = MSG_INIT_ACK, .gen = PROTO_GEN_CURRENT };
	uint64_t end = now_ms() + (uint64_t)timeout_ms;
	bool resolved = false;
	struct msg m;
	uint32_t id;

	boot.u.bootstrap.security_profile = SECURITY_DEFAULT;
	conn_send(c, 0, &boot);
	for (;;) {
		struct pollfd p[1];
		uint64_t now = now_ms();

		while (conn_next(c, &id, &m)) {
			if (m.type == MSG_INIT_RESOLVED && !resolved) {
				resolved = true;
				conn_send(c, 0, &ack);
			} else if (m.type == MSG_READY && resolved) {
				return;
			} else {
				fail("unexpected %s during the generation 7 boot",
				     msg_type_name(m.type));
			}
		}
		if (c->eof)
			fail("the agent closed the connection during its boot");
		if (now >= end)
			fail("the agent was not ready within %.1f s",
			     (double)timeout_ms / 1000);
		conn_poll(c, p, 1, (int)(end - now));
	}
}

/*
 * How long a file operation may still wait for the agent: it has been
 * waiting since `since` or since bytes last went out, whichever is later.
 * An agent that neither answers nor takes our bytes for --idle-timeout
 * (frames for other ids do not count) is given up on.
 */
static int conn_idle_left(struct conn *c, uint64_t since)
{
	uint64_t now = now_ms(), last = c->active > since ? c->active : since;

	if (c->idle_ms <= 0)
		return -1;
	if (now - last >= (uint64_t)c->idle_ms)
		fail("the agent did not answer for %.1f s; giving up (--idle-timeout)",
		     (double)c->idle_ms / 1000);
	return (int)(last + (uint64_t)c->idle_ms - now);
}

/* Wait for the next message on id (others are dropped); fatal on EOF
 * and after --idle-timeout without one. */
static void conn_wait_msg(struct conn *c, uint32_t want, struct msg *m)
{
	uint64_t since = now_ms();
	uint32_t id;

	for (;;) {
		struct pollfd p[1];

		while (conn_next(c, &id, m))
			if (id == want)
				return;
		if (c->eof)
			fail("connection to the agent lost");
		conn_poll(c, p, 1, conn_idle_left(c, since));
	}
}

/* ------------------------------------------------------------------ */
/* The local terminal                                                  */

/* The one piece of global state: atexit() needs it to put the terminal
 * back however agentctl ends. */
static struct termios saved_termios;
static bool termios_saved;

static void terminal_restore(void)
{
	if (termios_saved) {
		tcsetattr(STDIN_FILENO, TCSADRAIN, &saved_termios);
		termios_saved = false;
	}
}

static void terminal_raw(void)
{
	struct termios t;

	if (tcgetattr(STDIN_FILENO, &saved_termios) < 0)
		return;
	termios_saved = true;
	atexit(terminal_restore);
	t = saved_termios;
	cfmakeraw(&t);
	if (tcsetattr(STDIN_FILENO, TCSADRAIN, &t) < 0)
		fail("cannot put the terminal in raw mode: %s", strerror(errno));
}

static void terminal_size(uint16_t *rows, uint16_t *cols)
{
	struct winsize ws;

	*rows = 24;
	*cols = 80;
	if ((ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 ||
	     ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) == 0) && ws.ws_row && ws.ws_col) {
		*rows = ws.ws_row;
		*cols = ws.ws_col;
	}
}

/* ------------------------------------------------------------------ */
/* Filesystem requests                                                 */

/* An owned copy of an FsEntryInfo (decoded ones die with their frame). */
struct entry {
	char *path;
	char kind[8];
	uint64_t size;
	uint32_t mode;
	bool has_modified;
	int64_t modified;
};

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

/* Send one request and wait for its response; entries are copied out. */
static void fs_call(struct conn *c, const struct fs_request *req, struct fs_result *r)
{
	struct msg m = { .type = MSG_FS_REQUEST, .gen = PROTO_GEN_SEED };
	uint32_t id = conn_new_id(c);
	const struct fs_response *fr;

	m.u.fs_request = *req;
	conn_send(c, id, &m);
	for (;;) {
		conn_wait_msg(c, id, &m);
		if (m.type == MSG_FS_RESPONSE)
			break;
	}
	fr = &m.u.fs_response;
	memset(r, 0, sizeof(*r));
	r->ok = fr->ok;
	snprintf(r->error, sizeof(r->error), "%s",
		 fr->error ? fr->error : "operation failed");
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
static bool guest_stat(struct conn *c, const char *path, struct entry *e)
{
	struct fs_request req = { .op = FS_STAT, .path = path };
	struct fs_result r;

	fs_call(c, &req, &r);
	if (!r.ok)
		return false;
	*e = r.stat;
	return true;
}

static bool guest_is_dir(struct conn *c, const char *path)
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
			if (rid != id || m.type != MSG_FS_RESPONSE)
				continue;
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
		}
	}
}

/* ------------------------------------------------------------------ */
/* Command line plumbing                                               */

struct ctl {
	struct conn conn;
	const char *socket_path;
	int port_fd;
	int64_t ready_timeout_ms;
	int64_t idle_timeout_ms;
	bool json;
	bool quiet;
	bool g7;      /* --g7: boot a generation 7 agent on this connection */
};

static const char usage_main[] =
"usage: agentctl (-s PATH | --fd N) [--ready-timeout D] [--idle-timeout D]\n"
"                COMMAND [ARGS]\n"
"\n"
"Drive agentd, the guest agent of a microVM, over its agent port.\n"
"\n"
"  -s, --socket PATH     the agent port: a Unix socket (QEMU -chardev socket)\n"
"                        or a character device\n"
"      --fd N            the agent port is the already open fd N\n"
"      --ready-timeout D wait at most D for the agent (default 60s)\n"
"      --idle-timeout D  give up (125) on a file operation when the agent\n"
"                        neither answers nor takes data for D (default 60s,\n"
"                        0 = wait forever)\n"
"      --g7              boot a generation 7 agent (microsandbox's own) on this\n"
"                        connection: bootstrap, init ack, ready; then exec,\n"
"                        ready and shutdown work as usual\n"
"  -h, --help            this help; COMMAND --help for a command's help\n"
"\n"
"commands:\n"
"  exec [-t|-T] [-i] [-e K=V] [-w DIR] [-u USER] [--timeout D] -- CMD [ARG...]\n"
"                        run a command in the guest\n"
"  cp [-r] [-q] SRC DST  copy files; one side is :/guest/path or guest:/path,\n"
"                        - is stdin or stdout\n"
"  ls [--json] PATH      list a guest directory\n"
"  stat [--json] PATH... show guest file metadata\n"
"  mkdir PATH...         create guest directories (with parents)\n"
"  rm [-r] PATH...       remove guest files (-r: directory trees)\n"
"  mv SRC DST            rename or move inside the guest\n"
"  cat PATH...           print guest files\n"
"  ready [--json]        print the agent's boot timings\n"
"  shutdown              power the guest off\n"
"\n"
"Durations: 30, 30s, 500ms, 2m, 1h.  Exit status: see each command's help;\n"
"125 means agentctl itself failed (usage, local or transport error).\n";

static const char usage_exec[] =
"usage: agentctl exec [OPTIONS] [--] CMD [ARG...]\n"
"\n"
"Run CMD in the guest, streaming stdin, stdout and stderr.\n"
"\n"
"  -t, --tty          allocate a terminal (default when stdin and stdout are\n"
"                     terminals): raw local terminal, size and resizes passed on\n"
"  -T, --no-tty       never allocate a terminal (stdout and stderr stay apart)\n"
"  -i, --interactive  forward stdin (implied by a terminal); without it the\n"
"                     command reads end-of-file, so it never waits for input\n"
"  -e, --env K=V      set an environment variable (-e K copies the local one)\n"
"  -w, --workdir DIR  working directory in the guest\n"
"  -u, --user USER    user[:group], names or numbers\n"
"      --timeout D    kill the remote process group after D; exit 124\n"
"\n"
"SIGINT, SIGTERM and SIGHUP sent to agentctl are forwarded to the remote\n"
"process group (the third SIGINT sends SIGKILL).  With a terminal, TERM is\n"
"passed on unless -e sets it.\n"
"\n"
"Exit status: the remote exit status; 128+N when the remote process was\n"
"killed by signal N; 124 on --timeout; 127 when the command could not be\n"
"started (126 when it exists but could not be run, or -w is not a\n"
"directory); 125 for agentctl's own errors and a lost connection.\n";

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
"  -r, --recursive  copy directories (symlinks and special files are skipped\n"
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
static const char usage_ready[] =
"usage: agentctl ready [--json]\n"
"\n"
"Wait until the agent serves and print its boot timings (CLOCK_BOOTTIME):\n"
"kernel to agent start, PID 1 initialisation, agent start to ready.  The\n"
"agent sends its timings once per boot, to the first client; later clients\n"
"are told so.\n";
static const char usage_shutdown[] =
"usage: agentctl shutdown [--timeout D]\n"
"\n"
"Ask the guest to power off and wait (default 30s) until the port closes.\n";

static void usage_error(const char *usage, const char *fmt, ...) __attribute__((noreturn));
static void usage_error(const char *usage, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport(fmt, ap);
	va_end(ap);
	fprintf(stderr, "%.*s", (int)strcspn(usage, "\n") + 1, usage);
	exit(EXIT_TOOL);
}

static void ctl_connect(struct ctl *x)
{
	int fd = x->port_fd;

	if (fd < 0)
		fd = open_port(x->socket_path, x->ready_timeout_ms);
	conn_init(&x->conn, fd, x->g7 ? PROTO_GEN_CURRENT : PROTO_GEN_SEED);
	x->conn.idle_ms = x->idle_timeout_ms;
	if (x->g7)
		conn_boot_g7(&x->conn, x->ready_timeout_ms);
	else
		conn_wait_ready(&x->conn, x->ready_timeout_ms);
}

/* Parse the options of a sub-command: a tiny getopt_long wrapper. */
static int sub_getopt(int argc, char **argv, const char *shortopts,
		      const struct option *longopts, const char *usage)
{
	int o = getopt_long(argc, argv, shortopts, longopts, NULL);

	if (o == 'h') {
		fputs(usage, stdout);
		exit(0);
	}
	if (o == '?')
		usage_error(usage, "bad option");
	return o;
}

/* ------------------------------------------------------------------ */
/* exec                                                                */

struct exec_opts {
	int tty;            /* -1 auto */
	bool interactive;
	const char **env;
	size_t nenv;
	const char *cwd, *user;
	int64_t timeout_ms; /* 0 = none */
	char **argv;
	int argc;
};

struct exec_state {
	uint32_t id;
	bool tty, forward_stdin, stdin_eof;
	bool started, exited, timed_out, stdout_closed;
	bool failed;        /* g7 core.exec.failed */
	int failed_kind;
	bool stdin_error;   /* g7 core.exec.stdin.error seen */
	int code;
	bool has_signal;
	int signal;
	int sigints;
	uint64_t deadline;  /* 0 = none */
};

static void exec_send_signal(struct conn *c, struct exec_state *s, int sig)
{
	struct msg m = { .type = MSG_EXEC_SIGNAL, .gen = PROTO_GEN_SEED };

	m.u.exec_signal.signal = sig;
	conn_send(c, s->id, &m);
}

static void exec_send_stdin(struct conn *c, struct exec_state *s, const void *p, size_t n)
{
	struct msg m = { .type = MSG_EXEC_STDIN, .gen = PROTO_GEN_SEED };

	m.u.data.data.p = p;
	m.u.data.data.n = n;
	conn_send(c, s->id, &m);
}

static void exec_send_request(struct conn *c, struct exec_state *s, const struct exec_opts *o)
{
	struct msg m = { .type = MSG_EXEC_REQUEST, .gen = PROTO_GEN_SEED };
	struct exec_request *r = &m.u.exec_request;

	r->cmd = o->argv[0];
	r->args = (const char **)o->argv + 1;
	r->nargs = (size_t)o->argc - 1;
	r->env = o->env;
	r->nenv = o->nenv;
	r->cwd = o->cwd;
	r->user = o->user;
	r->tty = s->tty;
	r->rows = 24;
	r->cols = 80;
	if (s->tty)
		terminal_size(&r->rows, &r->cols);
	conn_send(c, s->id, &m);
}

/* Output for the local terminal or pipe.  A closed stdout (EPIPE) turns
 * into SIGPIPE for the remote process, as it would for a local one. */
static void exec_output(struct conn *c, struct exec_state *s, int fd, struct slice d)
{
	if (fd == STDOUT_FILENO && s->stdout_closed)
		return;
	if (write_all(fd, d.p, d.n) == 0)
		return;
	if (errno != EPIPE)
		fail("write %s: %s", fd == STDOUT_FILENO ? "stdout" : "stderr",
		     strerror(errno));
	if (fd == STDOUT_FILENO) {
		s->stdout_closed = true;
		exec_send_signal(c, s, SIGPIPE);
	}
}

static void exec_handle(struct conn *c, struct exec_state *s, const struct msg *m)
{
	switch (m->type) {
	case MSG_EXEC_STARTED:
		s->started = true;
		break;
	case MSG_EXEC_STDOUT:
		exec_output(c, s, STDOUT_FILENO, m->u.data.data);
		break;
	case MSG_EXEC_STDERR:
		exec_output(c, s, STDERR_FILENO, m->u.data.data);
		break;
	case MSG_EXEC_EXITED:
		s->exited = true;
		s->code = m->u.exec_exited.code;
		s->has_signal = m->u.exec_exited.has_signal;
		s->signal = m->u.exec_exited.signal;
		break;
	case MSG_EXEC_FAILED:
		s->exited = s->failed = true;
		s->failed_kind = (int)m->u.exec_failed.kind;
		warn("cannot run the command: %s", m->u.exec_failed.message ?
		     m->u.exec_failed.message : "spawn failed");
		break;
	case MSG_EXEC_STDIN_ERROR:
		if (!s->stdin_error)
			warn("the remote command's stdin failed: %s",
			     m->u.exec_stdin_error.message ?
			     m->u.exec_stdin_error.message : "error");
		s->stdin_error = true;
		break;
	case MSG_ERROR:
		terminal_restore();
		fail("the agent refused the request: %s", m->u.core_error.message ?
		     m->u.core_error.message : "core.error");
	default:
		break;
	}
}

static void exec_read_stdin(struct conn *c, struct exec_state *s, uint8_t *buf)
{
	ssize_t r = read(STDIN_FILENO, buf, DATA_CHUNK);

	if (r < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (r > 0) {
		exec_send_stdin(c, s, buf, (size_t)r);
		return;
	}
	/* EOF or error: a pipe child sees end-of-file; a terminal gets ^D,
	 * since a PTY session ignores the empty end-of-input frame. */
	s->stdin_eof = true;
	if (s->tty)
		exec_send_stdin(c, s, "\x04", 1);
	else
		exec_send_stdin(c, s, "", 0);
}

static void exec_handle_signal(struct conn *c, struct exec_state *s, int sfd)
{
	struct signalfd_siginfo si;

	while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		int sig = (int)si.ssi_signo;

		if (sig == SIGWINCH) {
			struct msg m = { .type = MSG_EXEC_RESIZE, .gen = PROTO_GEN_SEED };

			if (!s->tty)
				continue;
			terminal_size(&m.u.exec_resize.rows, &m.u.exec_resize.cols);
			conn_send(c, s->id, &m);
			continue;
		}
		if (sig == SIGINT && ++s->sigints >= 3)
			sig = SIGKILL;
		exec_send_signal(c, s, sig);
	}
}

static int signals_open(void)
{
	sigset_t set;
	int fd;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGWINCH);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		fail("sigprocmask: %s", strerror(errno));
	fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (fd < 0)
		fail("signalfd: %s", strerror(errno));
	return fd;
}

/* The command could not be started: 127, or 126 when it evidently
 * exists (a path naming an existing file) or -w is not a directory. */
static int exec_not_started(struct conn *c, const struct exec_opts *o)
{
	const char *cmd = o->argv[0];
	struct entry e;

	if (o->cwd && !guest_is_dir(c, o->cwd)) {
		warn("cannot run %s: working directory %s is not a directory in the guest",
		     cmd, o->cwd);
		return EXIT_NOEXEC;
	}
	if (strchr(cmd, '/') && guest_stat(c, cmd, &e)) {
		free(e.path);
		warn("cannot run %s in the guest (not executable, or bad -u)", cmd);
		return EXIT_NOEXEC;
	}
	warn("cannot run %s in the guest: not found (or bad -u)", cmd);
	return EXIT_NOTFOUND;
}

static int exec_status(struct conn *c, const struct exec_state *s, const struct exec_opts *o)
{
	if (s->timed_out) {
		warn("timed out; the remote process group was killed");
		return EXIT_TIMEOUT;
	}
	if (s->failed)
		return s->failed_kind == EXEC_FAIL_NOT_FOUND ? EXIT_NOTFOUND : EXIT_NOEXEC;
	if (s->code >= 0 && s->code <= 255)
		return s->code;
	if (s->code == -1 && s->has_signal && s->signal > 0 && s->signal < 128)
		return 128 + s->signal;
	if (s->code == -1 && !s->started)
		return exec_not_started(c, o);
	warn("the agent reported no usable exit status (code %d)", s->code);
	return EXIT_TOOL;
}

static int exec_loop(struct conn *c, struct exec_state *s, int sfd)
{
	uint8_t *buf = xmalloc(DATA_CHUNK);
	uint32_t id;
	struct msg m;

	while (!s->exited) {
		struct pollfd p[3];
		int n = 2, timeout = -1, in_slot = -1;
		uint64_t now = now_ms();

		if (s->deadline && now >= s->deadline) {
			if (s->timed_out)
				break;  /* the agent did not report the kill */
			s->timed_out = true;
			exec_send_signal(c, s, SIGKILL);
			s->deadline = now + KILL_GRACE_MS;
		}
		if (s->deadline)
			timeout = (int)(s->deadline - now);
		p[1].fd = sfd;
		p[1].events = POLLIN;
		p[1].revents = 0;
		if (s->forward_stdin && !s->stdin_eof && conn_pending(c) < OUT_SOFT) {
			in_slot = n++;
			p[in_slot].fd = STDIN_FILENO;
			p[in_slot].events = POLLIN;
			p[in_slot].revents = 0;
		}
		conn_poll(c, p, n, timeout);
		if (p[1].revents & POLLIN)
			exec_handle_signal(c, s, sfd);
		if (in_slot > 0 && (p[in_slot].revents & (POLLIN | POLLHUP | POLLERR)))
			exec_read_stdin(c, s, buf);
		if (in_slot > 0 && (p[in_slot].revents & POLLNVAL))
			s->stdin_eof = true;
		while (!s->exited && conn_next(c, &id, &m))
			if (id == s->id)
				exec_handle(c, s, &m);
		if (!s->exited && c->eof) {
			if (s->timed_out)
				break;
			terminal_restore();
			fail("connection to the agent lost before the command ended");
		}
	}
	free(buf);
	terminal_restore();
	return 0;
}

static void exec_add_env(struct exec_opts *o, const char *kv)
{
	if (!strchr(kv, '=')) {
		/* -e NAME copies the local value, as docker does. */
		const char *v = getenv(kv);
		char *s;

		if (!v)
			return;
		s = xmalloc(strlen(kv) + strlen(v) + 2);
		sprintf(s, "%s=%s", kv, v);
		kv = s;
	}
	o->env[o->nenv++] = kv;
}

static bool env_has(const struct exec_opts *o, const char *key)
{
	size_t n = strlen(key);

	for (size_t i = 0; i < o->nenv; i++)
		if (!strncmp(o->env[i], key, n) && o->env[i][n] == '=')
			return true;
	return false;
}

static void exec_parse(int argc, char **argv, struct exec_opts *o)
{
	static const struct option lo[] = {
		{ "tty", no_argument, NULL, 't' },
		{ "no-tty", no_argument, NULL, 'T' },
		{ "interactive", no_argument, NULL, 'i' },
		{ "env", required_argument, NULL, 'e' },
		{ "workdir", required_argument, NULL, 'w' },
		{ "user", required_argument, NULL, 'u' },
		{ "timeout", required_argument, NULL, 'O' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->tty = -1;
	o->env = xmalloc(((size_t)argc + 1) * sizeof(*o->env));
	while ((c = sub_getopt(argc, argv, "+tTie:w:u:h", lo, usage_exec)) != -1) {
		switch (c) {
		case 't': o->tty = 1; break;
		case 'T': o->tty = 0; break;
		case 'i': o->interactive = true; break;
		case 'e': exec_add_env(o, optarg); break;
		case 'w': o->cwd = optarg; break;
		case 'u': o->user = optarg; break;
		case 'O':
			o->timeout_ms = parse_duration(optarg);
			if (o->timeout_ms <= 0)
				usage_error(usage_exec, "bad --timeout %s", optarg);
			break;
		}
	}
	o->argv = argv + optind;
	o->argc = argc - optind;
	if (o->argc < 1)
		usage_error(usage_exec, "exec needs a command");
}

static int cmd_exec(struct ctl *x, int argc, char **argv)
{
	struct exec_opts o;
	struct exec_state s;
	const char *term = getenv("TERM");
	char *term_kv = NULL;
	int sfd;

	exec_parse(argc, argv, &o);
	memset(&s, 0, sizeof(s));
	s.tty = o.tty == 1 || (o.tty == -1 && isatty(STDIN_FILENO) && isatty(STDOUT_FILENO));
	s.forward_stdin = o.interactive || s.tty;
	if (s.tty && term && *term && !env_has(&o, "TERM")) {
		term_kv = xmalloc(strlen(term) + 6);
		sprintf(term_kv, "TERM=%s", term);
		o.env[o.nenv++] = term_kv;
	}
	/* Signals are taken over only once the command runs: a Ctrl-C while
	 * the VM boots simply ends agentctl. */
	ctl_connect(x);
	sfd = signals_open();
	s.id = conn_new_id(&x->conn);
	exec_send_request(&x->conn, &s, &o);
	if (!s.forward_stdin)
		exec_send_stdin(&x->conn, &s, "", 0);
	if (o.timeout_ms)
		s.deadline = now_ms() + (uint64_t)o.timeout_ms;
	if (s.tty && isatty(STDIN_FILENO))
		terminal_raw();
	exec_loop(&x->conn, &s, sfd);
	free(term_kv);
	return exec_status(&x->conn, &s, &o);
}

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
		fail("open %s: %s", *parent ? parent : ".", strerror(errno));
	if (!strcmp(e.kind, "dir"))
		cp_get_tree(cp, gsrc, pfd, name, target, e.mode, 0);
	else
		cp_get_file(cp, gsrc, pfd, name, target, e.mode, e.size, true);
	close(pfd);
	free(name);
	free(parent);
	free(target);
	free(e.path);
}

static int cmd_cp(struct ctl *x, int argc, char **argv)
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

static int cmd_ls(struct ctl *x, int argc, char **argv)
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

static int cmd_stat(struct ctl *x, int argc, char **argv)
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

static int cmd_mkdir(struct ctl *x, int argc, char **argv)
{
	static const struct option lo[] = { { "help", no_argument, NULL, 'h' }, { 0 } };

	while (sub_getopt(argc, argv, "+ph", lo, usage_mkdir) != -1)
		;  /* -p is accepted: parents are always created */
	if (argc - optind < 1)
		usage_error(usage_mkdir, "mkdir needs a path");
	return simple_ops(x, FS_MKDIR, argv + optind, argc - optind);
}

static int cmd_rm(struct ctl *x, int argc, char **argv)
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

static int cmd_mv(struct ctl *x, int argc, char **argv)
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

static int cmd_cat(struct ctl *x, int argc, char **argv)
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

static int cmd_ready(struct ctl *x, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	const struct ready *r = &x->conn.ready;

	while (sub_getopt(argc, argv, "+h", lo, usage_ready) != -1)
		x->json = true;
	if (argc - optind)
		usage_error(usage_ready, "ready takes no arguments");
	ctl_connect(x);
	if (!x->conn.have_ready) {
		if (x->json)
			puts("{\"ready\": true}");
		else
			puts("ready (the boot timings went to an earlier client)");
		return 0;
	}
	if (x->json) {
		printf("{\"ready\": true, \"boot_time_ns\": %llu, \"init_time_ns\": %llu, "
		       "\"ready_time_ns\": %llu}\n", (unsigned long long)r->boot_time_ns,
		       (unsigned long long)r->init_time_ns,
		       (unsigned long long)r->ready_time_ns);
		return 0;
	}
	printf("kernel to agent start  %10.1f ms\n", (double)r->boot_time_ns / 1e6);
	printf("init (PID 1 setup)     %10.1f ms\n", (double)r->init_time_ns / 1e6);
	printf("agent start to ready   %10.1f ms\n",
	       (double)(r->ready_time_ns - r->boot_time_ns) / 1e6);
	printf("boot to ready          %10.1f ms\n", (double)r->ready_time_ns / 1e6);
	return 0;
}

static int cmd_shutdown(struct ctl *x, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "timeout", required_argument, NULL, 'O' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	int64_t timeout = 30000;
	uint64_t end;
	int c;

	while ((c = sub_getopt(argc, argv, "+h", lo, usage_shutdown)) != -1) {
		timeout = parse_duration(optarg);
		if (timeout <= 0)
			usage_error(usage_shutdown, "bad --timeout %s", optarg);
	}
	ctl_connect(x);
	conn_send_shutdown(&x->conn);
	end = now_ms() + (uint64_t)timeout;
	/* The agent sends nothing back; the port closes when the VM stops. */
	while (!x->conn.eof) {
		struct pollfd p[1];
		struct msg m;
		uint32_t id;
		uint64_t now = now_ms();

		if (now >= end) {
			warn("the guest did not close the port within %.1f s",
			     (double)timeout / 1000);
			return EXIT_FAILED;
		}
		conn_poll(&x->conn, p, 1, (int)(end - now));
		while (conn_next(&x->conn, &id, &m))
			;
	}
	return 0;
}

/* ------------------------------------------------------------------ */

struct command {
	const char *name;
	int (*run)(struct ctl *x, int argc, char **argv);
};

static const struct command commands[] = {
	{ "exec", cmd_exec }, { "cp", cmd_cp }, { "ls", cmd_ls },
	{ "stat", cmd_stat }, { "mkdir", cmd_mkdir }, { "rm", cmd_rm },
	{ "mv", cmd_mv }, { "cat", cmd_cat }, { "ready", cmd_ready },
	{ "shutdown", cmd_shutdown },
};

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "fd", required_argument, NULL, 'F' },
		{ "ready-timeout", required_argument, NULL, 'R' },
		{ "idle-timeout", required_argument, NULL, 'I' },
		{ "g7", no_argument, NULL, 'G' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct ctl x = { .port_fd = -1, .ready_timeout_ms = 60000, .idle_timeout_ms = 60000 };
	char *end;
	long fd;
	int c;

	signal(SIGPIPE, SIG_IGN);
	while ((c = getopt_long(argc, argv, "+s:h", lo, NULL)) != -1) {
		switch (c) {
		case 's':
			x.socket_path = optarg;
			break;
		case 'F':
			fd = strtol(optarg, &end, 10);
			if (*end || fd < 0 || fd > INT_MAX || fcntl((int)fd, F_GETFD) < 0)
				usage_error(usage_main, "--fd %s: not an open fd", optarg);
			x.port_fd = (int)fd;
			break;
		case 'R':
			x.ready_timeout_ms = parse_duration(optarg);
			if (x.ready_timeout_ms <= 0)
				usage_error(usage_main, "bad --ready-timeout %s", optarg);
			break;
		case 'I':
			x.idle_timeout_ms = parse_duration(optarg);
			if (x.idle_timeout_ms < 0)
				usage_error(usage_main, "bad --idle-timeout %s", optarg);
			break;
		case 'G':
			x.g7 = true;
			break;
		case 'h':
			fputs(usage_main, stdout);
			return 0;
		default:
			usage_error(usage_main, "bad option");
		}
	}
	if (optind >= argc)
		usage_error(usage_main, "no command given");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[optind], commands[i].name))
			continue;
		if (!x.socket_path && x.port_fd < 0) {
			/* Per-command help needs no connection. */
			bool help = argc > optind + 1 && (!strcmp(argv[optind + 1], "--help") ||
							  !strcmp(argv[optind + 1], "-h"));
			if (!help)
				usage_error(usage_main, "no agent port given (-s PATH or --fd N)");
		}
		if (x.g7 && commands[i].run != cmd_exec && commands[i].run != cmd_ready &&
		    commands[i].run != cmd_shutdown)
			usage_error(usage_main, "--g7 supports exec, ready and shutdown only "
				    "(generation 7 file access is handle based)");
		argv += optind;
		argc -= optind;
		optind = 0;  /* restart getopt for the command's options */
		return commands[i].run(&x, argc, argv);
	}
	usage_error(usage_main, "unknown command \"%s\"", argv[optind]);
}
