/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ctl_transport.c - agentctl's errors and helpers and its connection to the agent:
 * frames in and out, bounded buffers, the ready handshake, the idle timeout.
 *
 * Everything that reaches a human from here goes through sanitize():
 * guest names and error texts must not drive the terminal.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"

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

void sanitize(char *s)
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
const char *safe(const char *s, char *buf, size_t n)
{
	snprintf(buf, n, "%s", s);
	sanitize(buf);
	return buf;
}

void vreport(const char *fmt, va_list ap)
{
	char buf[2048];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	sanitize(buf);
	fprintf(stderr, "%s: %s\n", prog, buf);
}

void fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport(fmt, ap);
	va_end(ap);
	exit(EXIT_TOOL);
}

void warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport(fmt, ap);
	va_end(ap);
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		fail("out of memory");
	return p;
}

char *xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);

	memcpy(p, s, n);
	p[n] = 0;
	return p;
}

uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Write everything, blocking; -1 with errno on failure. */
int write_all(int fd, const void *p, size_t n)
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
int64_t parse_duration(const char *s)
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

const char *base_name(const char *p)
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
char *path_join(const char *a, const char *b)
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
char *last_component(const char *p)
{
	const char *b = base_name(p);
	size_t n = strlen(b);

	while (n > 1 && b[n - 1] == '/')
		n--;
	return xstrndup(b, n);
}


/* ------------------------------------------------------------------ */
/* The connection to the agent                                         */

size_t conn_pending(const struct conn *c)
{
	return c->out.len - c->out_head;
}

uint32_t conn_new_id(struct conn *c)
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
void conn_send(struct conn *c, uint32_t id, const struct msg *m)
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

void conn_send_shutdown(struct conn *c)
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
int conn_poll(struct conn *c, struct pollfd *fds, int n, int timeout_ms)
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
void conn_flush(struct conn *c, int timeout_ms)
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
int conn_next(struct conn *c, uint32_t *id, struct msg *m)
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

void conn_init(struct conn *c, int fd, uint8_t gen)
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

int open_port(const char *path, int64_t timeout_ms)
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
void conn_wait_ready(struct conn *c, int64_t timeout_ms)
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
void conn_boot_g7(struct conn *c, int64_t timeout_ms)
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
int conn_idle_left(struct conn *c, uint64_t since)
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
void conn_wait_msg(struct conn *c, uint32_t want, struct msg *m)
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
