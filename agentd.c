/* SPDX-License-Identifier: Apache-2.0 */
/*
 * agentd.c - main, the port and the one event loop.
 *
 * Everything happens on one thread around one epoll set: the port, a
 * signalfd (SIGCHLD, SIGTERM, SIGINT), timerfds (heartbeat, shutdown
 * grace, port re-poll) and the fds of exec sessions and fs streams.
 * Output for the host goes through one bounded queue (a->out); the port
 * is not read while that queue or the stdin queues are over their bounds.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "rawsys.h"
#include "fmt.h"

#define PORT_NAME          "agent"
#define DISCOVERY_TRIES    100        /* every 100 ms: 10 s (SPEC 1.1) */
#define REPOLL_MS          100        /* disconnected port (SPEC 1.2) */
#define GRACE_MS           500        /* SIGTERM -> SIGKILL (SPEC 7) */
#define KILL_WAIT_MS       200        /* SIGKILL -> give up waiting */
#define FLUSH_WAIT_MS      200        /* last frames before exiting */
#define STDIN_CHECK_MS     250        /* re-check stdin bounds while paused */
#define ARENA_LIMIT        (16u * 1024 * 1024)

struct options {
	const char *port_path;
	int port_fd;
	bool init;
};

/* ---- small helpers for the modules ---- */

/*
 * The console is a slow serial port written synchronously, and a host
 * sending bad frames (or a guest failing execs) in a loop can make a log
 * line each: a burst of 50 lines, then one per 100 ms (GCRA).  Lines
 * dropped meanwhile are counted and reported with the next one written.
 * Static state: the limit belongs to the console, and modules log without
 * the agent struct.
 */
static bool log_allowed(unsigned *dropped_before)
{
	static uint64_t tat;
	static unsigned dropped;
	const uint64_t every = 100000000, burst = 50 * every;
	uint64_t now = agent_clock_ns(CLOCK_MONOTONIC);

	if (tat < now)
		tat = now;
	if (tat - now > burst) {
		dropped++;
		return false;
	}
	tat += every;
	*dropped_before = dropped;
	dropped = 0;
	return true;
}

void agent_log(const char *format, ...)
{
	char buf[1024] = "agentd: ";
	va_list ap;
	unsigned dropped;
	int n = 8;

	if (!log_allowed(&dropped))
		return;
	if (dropped)
		n += fmt(buf + n, sizeof(buf) - n, "%u log lines suppressed\nagentd: ",
			 dropped);
	va_start(ap, format);
	n += vfmt(buf + n, sizeof(buf) - n - 1, format, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	/* The console may be gone; nothing useful to do about it. */
	if (write(STDERR_FILENO, buf, n) < 0)
		return;
}

uint64_t agent_clock_ns(int clock_id)
{
	struct timespec ts;

	if (clock_gettime(clock_id, &ts) < 0)
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int agent_watch(struct agent *a, struct watch *w, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = w };

	if (epoll_ctl(a->epfd, EPOLL_CTL_ADD, w->fd, &ev) < 0)
		return -1;
	w->events = events;
	return 0;
}

int agent_rewatch(struct agent *a, struct watch *w, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = w };

	if (epoll_ctl(a->epfd, EPOLL_CTL_MOD, w->fd, &ev) < 0)
		return -1;
	w->events = events;
	return 0;
}

void agent_unwatch(struct agent *a, struct watch *w)
{
	int i;

	/* events is 0 exactly when w is not in the set (agent_watch never
	 * registers none): a session's stdin pipe, say, never was. */
	if (w->events)
		epoll_ctl(a->epfd, EPOLL_CTL_DEL, w->fd, NULL);
	w->events = 0;
	/* The caller may free w right away: forget its pending events. */
	for (i = a->batch_next; i < a->batch_n; i++)
		if (a->batch[i].data.ptr == w)
			a->batch[i].data.ptr = NULL;
}

int agent_watch_set(struct agent *a, struct watch *w, uint32_t events)
{
	if (events == w->events)
		return 0;
	if (!events) {
		agent_unwatch(a, w);
		return 0;
	}
	if (!w->events)
		return agent_watch(a, w, events);
	return agent_rewatch(a, w, events);
}

/* ---- the output queue ---- */

static size_t out_pending(const struct agent *a)
{
	return a->out.len - a->out_head;
}

size_t agent_out_room(const struct agent *a)
{
	size_t p = out_pending(a);

	return p < OUT_SOFT_LIMIT ? OUT_SOFT_LIMIT - p : 0;
}

int queue_reserve(uint8_t **buf, size_t *head, size_t *len, size_t *cap,
		  size_t n)
{
	size_t c;
	uint8_t *p;

	if (*cap - *len >= n)
		return 0;
	if (*head) {
		memmove(*buf, *buf + *head, *len - *head);
		*len -= *head;
		*head = 0;
		if (*cap - *len >= n)
			return 0;
	}
	c = *cap ? *cap : 64 * 1024;
	while (c - *len < n)
		c *= 2;
	p = realloc(*buf, c);
	if (!p)
		return -1;
	*buf = p;
	*cap = c;
	return 0;
}

static int out_reserve(struct agent *a, size_t n)
{
	return queue_reserve(&a->out.buf, &a->out_head, &a->out.len,
			     &a->out.cap, n);
}

/* An emptied queue keeps its buffer while busy; agent_trim frees it. */
static void out_reset(struct agent *a)
{
	a->out.len = 0;
	a->out_head = 0;
	a->out.overflow = false;
}

/* Idle: give back what bursts made the queue and the reader take (the
 * allocator returns blocks this large to the kernel). */
static void agent_trim(struct agent *a)
{
	if (!out_pending(a)) {
		out_reset(a);
		free(a->out.buf);
		a->out.buf = NULL;
		a->out.cap = 0;
	}
	frame_reader_trim(&a->in);
}

static size_t data_head_len(enum msg_type t, size_t n)
{
	struct cbor_out count = { 0 };

	frame_encode_data_head(&count, 0, PROTO_GEN_SEED, t, n);
	return count.len;
}

uint8_t *agent_data_space(struct agent *a, enum msg_type t, size_t max)
{
	size_t h = data_head_len(t, max);

	if (out_reserve(a, h + max) < 0) {
		agent_log("send %s: out of memory", msg_type_name(t));
		return NULL;
	}
	return a->out.buf + a->out.len + h;
}

/*
 * The data sits behind room for the head of a max-byte frame.  A shorter
 * head (n < 64 KiB) moves the start of an empty queue up to meet the data;
 * behind queued frames the data moves down instead.
 */
void agent_data_commit(struct agent *a, uint32_t id, enum msg_type t,
		       size_t max, size_t n)
{
	size_t hmax = data_head_len(t, max), h = data_head_len(t, n);
	uint8_t *data = a->out.buf + a->out.len + hmax;

	if (!n)
		return;
	if (h < hmax && !out_pending(a))
		a->out.len = a->out_head = a->out.len + hmax - h;
	else if (h < hmax)
		memmove(data - (hmax - h), data, n);
	frame_encode_data_head(&a->out, id, PROTO_GEN_SEED, t, n);
	a->out.len += n;
}

int agent_send(struct agent *a, uint32_t id, const struct msg *m)
{
	struct cbor_out count = { 0 };
	const char *name = msg_type_name(m->type);
	size_t need;

	payload_encode(&count, m);
	/* header 9 + envelope keys and heads: well under 64 + the name */
	need = count.len + 64 + (name ? strlen(name) : 0);
	if (need > FRAME_WIRE_MAX)
		return -1;
	if (out_reserve(a, need) < 0) {
		agent_log("send %s on id %u: out of memory", name, id);
		return -1;
	}
	return frame_encode_msg(&a->out, id, m->gen ? m->gen : PROTO_GEN_SEED, m);
}

/* ---- the port ---- */

static void port_update(struct agent *a);
static void shutdown_begin(struct agent *a, const char *why);

static int timer_arm(int fd, unsigned first_ms, unsigned every_ms)
{
	struct itimerspec its = {
		.it_value = { first_ms / 1000, (first_ms % 1000) * 1000000L },
		.it_interval = { every_ms / 1000, (every_ms % 1000) * 1000000L },
	};

	return timerfd_settime(fd, 0, &its, NULL);
}

/*
 * The host went away.  PID 1 keeps serving: forget the half-read and
 * half-written stream (a reconnecting host starts a fresh one) and poll
 * the port again shortly.  In host mode the process ends.
 */
static void port_lost(struct agent *a, int err, const char *op)
{
	if (a->host_mode) {
		agent_log("port %s: %s", op, err ? strerror(err) : "closed by the host");
		a->port_eof = true;
		out_reset(a);
		shutdown_begin(a, "port closed");
		return;
	}
	if (!a->port_down)
		agent_log("port %s: %s; waiting for the host", op,
			  err ? strerror(err) : "disconnected");
	a->port_down = true;
	a->port_eof = true;
	a->in.start = a->in.len = a->in.stream_left = 0;
	out_reset(a);
	fs_abort_all(a);
	port_update(a);
	timer_arm(a->retry_timer_fd, REPOLL_MS, 0);
}

static void port_flush(struct agent *a)
{
	while (out_pending(a) && !a->port_eof) {
		ssize_t n = write(a->port_fd, a->out.buf + a->out_head,
				  out_pending(a));

		if (n > 0) {
			a->out_head += n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		port_lost(a, n < 0 ? errno : EPIPE, "write");
		return;
	}
	if (!out_pending(a))
		out_reset(a);
}

static bool port_read_blocked(struct agent *a)
{
	uint64_t now = agent_clock_ns(CLOCK_MONOTONIC);
	bool stdin_full, uploads_full;

	if (out_pending(a) >= OUT_HARD_LIMIT || a->in_backlog)
		return true;
	stdin_full = sessions_stdin_blocked(a, now);
	uploads_full = fs_writes_blocked(a, now);
	return stdin_full || uploads_full;
}

/* want_out: wake on writability even with nothing queued (after_events). */
static void port_watch(struct agent *a, bool want_out)
{
	uint32_t ev = 0;

	a->reading_paused = port_read_blocked(a);
	if (!a->port_eof) {
		if (!a->reading_paused && !a->shutting_down)
			ev |= EPOLLIN;
		if (out_pending(a) || want_out)
			ev |= EPOLLOUT;
	}
	if (agent_watch_set(a, &a->port_w, ev) < 0)
		agent_log("epoll port: %s", strerror(errno));
}

static void port_update(struct agent *a)
{
	port_watch(a, false);
}

static void payload_failed(struct agent *a, uint32_t id, enum msg_type t,
			   const struct decode_error *err)
{
	struct msg m = { .gen = PROTO_GEN_SEED };
	char reason[256];

	agent_log("frame id %u: %s: invalid payload: %s", id,
		  msg_type_name(t), err->msg);
	if (t == MSG_EXEC_REQUEST) {
		m.type = MSG_EXEC_EXITED;
		m.u.exec_exited.code = -1;
		agent_send(a, id, &m);
	} else if (t == MSG_FS_REQUEST) {
		fmt(reason, sizeof(reason), "invalid request: %s", err->msg);
		m.type = MSG_FS_RESPONSE;
		m.u.fs_response.ok = false;
		m.u.fs_response.error = reason;
		agent_send(a, id, &m);
	}
}

/* A host must not reuse a live id (SPEC 2.3): refuse the new request. */
static bool id_reused(struct agent *a, uint32_t id, enum msg_type t)
{
	struct msg m = { .gen = PROTO_GEN_SEED };

	if (!session_id_live(a, id) && !fs_id_live(a, id))
		return false;
	agent_log("frame id %u: %s for an id still in use: rejected", id,
		  msg_type_name(t));
	if (t == MSG_EXEC_REQUEST) {
		m.type = MSG_EXEC_EXITED;
		m.u.exec_exited.code = -1;
	} else {
		m.type = MSG_FS_RESPONSE;
		m.u.fs_response.error = "id already in use";
	}
	agent_send(a, id, &m);
	return true;
}

static void dispatch(struct agent *a, uint32_t id, const struct msg *m)
{
	switch (m->type) {
	case MSG_EXEC_REQUEST:
		if (!id_reused(a, id, m->type))
			session_exec(a, id, &m->u.exec_request);
		break;
	case MSG_EXEC_STDIN:
		session_stdin(a, id, m->u.data.data);
		break;
	case MSG_EXEC_RESIZE:
		session_resize(a, id, m->u.exec_resize.rows, m->u.exec_resize.cols);
		break;
	case MSG_EXEC_SIGNAL:
		if (!fs_cancel(a, id))
			session_signal(a, id, m->u.exec_signal.signal);
		break;
	case MSG_FS_REQUEST:
		if (!id_reused(a, id, m->type))
			fs_request(a, id, &m->u.fs_request);
		break;
	case MSG_FS_DATA:
		fs_data(a, id, m->u.data.data);
		break;
	default:
		break;
	}
}

static void handle_frame(struct agent *a, const struct frame *f)
{
	struct envelope env;
	struct decode_error err = { { 0 } };
	struct msg m;

	if (envelope_decode_arena(f->body, f->body_len, &env, &a->arena, &err) < 0) {
		agent_log("frame id %u: bad envelope: %s", f->id, err.msg);
		return;
	}
	switch (env.type) {
	case MSG_SHUTDOWN:
		shutdown_begin(a, "core.shutdown");
		return;
	case MSG_EXEC_REQUEST: case MSG_EXEC_STDIN: case MSG_EXEC_RESIZE:
	case MSG_EXEC_SIGNAL: case MSG_FS_REQUEST: case MSG_FS_DATA:
		break;
	case MSG_UNKNOWN:
		agent_log("frame id %u: unknown type \"%.*s\" skipped", f->id,
			  (int)(env.type_name.n > 64 ? 64 : env.type_name.n),
			  (const char *)env.type_name.p);
		return;
	default:
		return;  /* not meant for the guest, or not of this generation */
	}
	memset(&m, 0, sizeof(m));
	if (payload_decode(env.type, PROTO_GEN_SEED, env.payload, &m,
			   &a->arena, &err) < 0) {
		payload_failed(a, f->id, env.type, &err);
		return;
	}
	dispatch(a, f->id, &m);
}

/* Consumers of streamed frames. */
static const struct in_sink in_sinks[] = {
	{ MSG_EXEC_STDIN, NULL, session_stdin_room, session_stdin },
	{ MSG_FS_DATA, fs_data_takes, fs_data_room, fs_data_piece },
};

/* The frame at the front streams to its consumer: heads consumed. */
static bool stream_begin(struct agent *a)
{
	struct frame_stream fs;
	const char *name;
	size_t i;

	if (!frame_stream_probe(&a->in, IN_STREAM_MIN, &fs) ||
	    fs.v != PROTO_GEN_SEED)
		return false;
	for (i = 0; i < sizeof(in_sinks) / sizeof(in_sinks[0]); i++) {
		name = msg_type_name(in_sinks[i].type);
		if (strlen(name) == fs.type.n && !memcmp(name, fs.type.p, fs.type.n) &&
		    (!in_sinks[i].takes || in_sinks[i].takes(a, fs.id))) {
			a->in_sink = &in_sinks[i];
			a->in_sink_id = fs.id;
			frame_stream_start(&a->in, &fs);
			return true;
		}
	}
	return false;
}

/* Hand the streamed bytes buffered so far on; false: the consumer is
 * full, the rest waits in the buffer and the port is not read. */
static bool stream_feed(struct agent *a)
{
	struct slice d = frame_stream_data(&a->in);

	if (!d.n)
		return true;
	if (!a->in_sink->room(a, a->in_sink_id))
		return false;
	frame_stream_consume(&a->in, d.n);
	a->in_sink->put(a, a->in_sink_id, d);
	return true;
}

/*
 * Every complete frame in the buffer; a shutdown ends the batch.  Past
 * the hard output limit the rest waits in the buffer (in_backlog): one
 * read can hold thousands of small requests, each answered with a frame
 * of up to 4 MiB.
 */
static void handle_frames(struct agent *a)
{
	struct frame f;

	a->in_backlog = false;
	while (!a->shutting_down) {
		if (out_pending(a) >= OUT_HARD_LIMIT || fs_queue_full(a)) {
			a->in_backlog = true;
			return;
		}
		if (a->in.stream_left) {
			if (!stream_feed(a)) {
				a->in_backlog = true;
				return;
			}
			if (a->in.stream_left)
				return;  /* the rest has not arrived */
			continue;
		}
		if (stream_begin(a))
			continue;
		switch (frame_next(&a->in, &f)) {
		case FRAME_NEED_MORE:
			return;
		case FRAME_TOO_LARGE:
			agent_log("frame too large (len %u): buffered input discarded",
				  a->in.last_bad_len);
			break;
		case FRAME_TOO_SHORT:
			agent_log("frame too short (len %u): skipped",
				  a->in.last_bad_len);
			break;
		case FRAME_OK:
			handle_frame(a, &f);
			arena_reset(&a->arena);
			break;
		}
	}
}

/*
 * A virtio port returns one of its small receive buffers per read: gather
 * up to a read chunk before handling it, so data frames reach a child in
 * few large writes, not many 4 KiB ones.  An error or EOF behind some
 * data shows again on the next turn.
 */
static void port_read(struct agent *a)
{
	size_t room, got = 0;
	uint8_t *p = frame_reader_space(&a->in, &room);
	ssize_t n = 0;

	if (!p || !room)
		return;  /* cannot happen once every frame is taken out */
	if (room > FRAME_READ_CHUNK)
		room = FRAME_READ_CHUNK;
	while (got < room) {
		n = read(a->port_fd, p + got, room - got);
		if (n > 0)
			got += n;
		else if (n == 0 || errno != EINTR)
			break;
	}
	if (!got) {
		if (n == 0 || errno != EAGAIN)
			port_lost(a, n ? errno : 0, "read");
		return;
	}
	if (a->port_down) {
		agent_log("port reconnected");
		a->port_down = false;
	}
	clock_gettime(CLOCK_REALTIME, &a->last_activity);
	frame_reader_commit(&a->in, got);
	handle_frames(a);
}

static void on_port(struct agent *a, struct watch *w, uint32_t events)
{
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
		port_read(a);
	if (!a->port_eof && (events & EPOLLOUT))
		port_flush(a);
}

static void on_retry(struct agent *a, struct watch *w, uint32_t events)
{
	uint64_t ticks;

	if (read(w->fd, &ticks, sizeof(ticks)) < 0)
		return;
	if (!a->port_eof || a->shutting_down)
		return;
	/* Watch again; a read returning 0 brings us back here. */
	a->port_eof = false;
	port_update(a);
}

/* ---- signals, timers, shutdown ---- */

static void reap_children(struct agent *a)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		fs_reaped(a, pid);
		heartbeat_reaped(a, pid);
		session_reaped(a, pid, status);
	}
}

static void on_signal(struct agent *a, struct watch *w, uint32_t events)
{
	struct signalfd_siginfo si[8];
	ssize_t n;
	size_t i;

	while ((n = read(w->fd, si, sizeof(si))) > 0) {
		for (i = 0; i < (size_t)n / sizeof(si[0]); i++) {
			if (si[i].ssi_signo == SIGCHLD)
				reap_children(a);
			else
				shutdown_begin(a, si[i].ssi_signo == SIGTERM ?
					       "SIGTERM" : "SIGINT");
		}
	}
	/* Coalesced SIGCHLDs: one more sweep costs nothing. */
	reap_children(a);
}

static void on_heartbeat(struct agent *a, struct watch *w, uint32_t events)
{
	uint64_t ticks;

	if (read(w->fd, &ticks, sizeof(ticks)) < 0)
		return;
	heartbeat_write(a);
}

static void shutdown_begin(struct agent *a, const char *why)
{
	if (a->shutting_down)
		return;
	agent_log("shutting down (%s)", why);
	a->shutting_down = true;
	a->shutdown_phase = 1;
	fs_abort_all(a);
	sessions_terminate(a, SIGTERM);
	sessions_terminate(a, SIGCONT);  /* a stopped child must see it */
	timer_arm(a->grace_timer_fd, GRACE_MS, 0);
}

static void on_grace(struct agent *a, struct watch *w, uint32_t events)
{
	uint64_t ticks;

	if (read(w->fd, &ticks, sizeof(ticks)) < 0)
		return;
	if (a->shutdown_phase == 1) {
		sessions_terminate(a, SIGKILL);
		if (getpid() == 1)
			kill(-1, SIGKILL);
		a->shutdown_phase = 2;
		timer_arm(a->grace_timer_fd, KILL_WAIT_MS, 0);
	} else {
		a->shutdown_phase = 3;
	}
}

/* Give the last frames (exited of killed sessions) a bounded chance. */
static void flush_before_exit(struct agent *a)
{
	uint64_t end = agent_clock_ns(CLOCK_MONOTONIC) + FLUSH_WAIT_MS * 1000000ull;
	struct pollfd pfd = { .fd = a->port_fd, .events = POLLOUT };

	while (out_pending(a) && !a->port_eof) {
		uint64_t now = agent_clock_ns(CLOCK_MONOTONIC);

		if (now >= end)
			break;
		if (poll(&pfd, 1, (int)((end - now) / 1000000) + 1) <= 0)
			break;
		port_flush(a);
	}
}

/* PID 1: nothing may keep a filesystem busy; reap for a bounded time. */
static void kill_everything(void)
{
	uint64_t end = agent_clock_ns(CLOCK_MONOTONIC) + KILL_WAIT_MS * 1000000ull;
	struct timespec pause_ts = { 0, 5 * 1000000L };
	pid_t r;

	kill(-1, SIGKILL);
	while (agent_clock_ns(CLOCK_MONOTONIC) < end) {
		while ((r = waitpid(-1, NULL, WNOHANG)) > 0)
			;
		if (r < 0 && errno == ECHILD)
			return;
		nanosleep(&pause_ts, NULL);
	}
}

static void shutdown_finish(struct agent *a)
{
	port_flush(a);
	flush_before_exit(a);
	/* --init outside PID 1 must never kill or power off the host. */
	if (getpid() != 1) {
		agent_log("exiting");
		exit(0);
	}
	kill_everything();
	init_unmount_all();
	init_power_off();
}

static bool shutdown_done(struct agent *a)
{
	return a->shutdown_phase >= 3 || (!a->sessions && !fs_children_left(a));
}

/* ---- setup ---- */

static const char usage_text[] =
	"usage: agentd [--port PATH | --port-fd N] [--init]\n"
	"              [--runtime-dir DIR] [--heartbeat-interval SECONDS]\n"
	"  --port PATH    character device, or a Unix socket to connect to\n"
	"  --port-fd N    an inherited, connected fd (tests, development)\n"
	"  --init         do the PID 1 duties even when not PID 1\n"
	"  --runtime-dir  runtime directory (default /.msb)\n"
	"  --heartbeat-interval  seconds between heartbeats (default 5)\n"
	"  --version      print the version and the protocol generation\n"
	"Without --port/--port-fd the virtio port named \"agent\" is used.\n";

/* No stdio in the agent: the usage goes out with one write. */
static void usage(int fd)
{
	if (write(fd, usage_text, sizeof(usage_text) - 1) < 0)
		return;
}

static void print_version(void)
{
	char buf[64];
	int n = fmt(buf, sizeof(buf), "agentd %s (protocol generation %u)\n",
		    AGENTD_VERSION, (unsigned)PROTO_GEN_SEED);

	if (n > 0 && write(STDOUT_FILENO, buf, (size_t)n) < 0)
		return;
}

static bool parse_uint(const char *s, unsigned max, unsigned *out)
{
	unsigned long v = 0;

	if (!s || !*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		v = v * 10 + (*s - '0');
		if (v > max)
			return false;
	}
	*out = v;
	return true;
}

/* 0, 1 to exit with status 0 (--help), -1 on a usage error. */
static int parse_options(int argc, char **argv, struct agent *a,
			 struct options *o)
{
	unsigned v;
	int i;

	for (i = 1; i < argc; i++) {
		const char *arg = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(arg, "--help")) {
			usage(STDOUT_FILENO);
			return 1;
		} else if (!strcmp(arg, "--version")) {
			print_version();
			return 1;
		} else if (!strcmp(arg, "--init")) {
			o->init = true;
		} else if (!strcmp(arg, "--port") && val) {
			o->port_path = val;
			i++;
		} else if (!strcmp(arg, "--port-fd") && parse_uint(val, 1 << 20, &v)) {
			o->port_fd = v;
			i++;
		} else if (!strcmp(arg, "--runtime-dir") && val) {
			a->runtime_dir = val;
			i++;
		} else if (!strcmp(arg, "--heartbeat-interval") &&
			   parse_uint(val, 86400, &v) && v > 0) {
			a->heartbeat_interval = v;
			i++;
		} else if (getpid() == 1) {
			/* The kernel hands init its unknown boot arguments. */
			continue;
		} else {
			agent_log("bad option or value: %s", arg);
			usage(STDERR_FILENO);
			return -1;
		}
	}
	return 0;
}

/* Children inherit 0-2: make sure they are open, so no pipe lands there. */
static void ensure_std_fds(void)
{
	int fd;

	for (fd = 0; fd < 3; fd++) {
		if (fcntl(fd, F_GETFD) >= 0)
			continue;
		if (open("/dev/null", O_RDWR) < 0)
			return;
	}
}

static int set_nonblock_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -1;
	return fcntl(fd, F_SETFD, FD_CLOEXEC);
}

static int port_connect_socket(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* The /dev node of the virtio port named "agent", or -1 (SPEC 1.1). */
static int port_discover(char *dev, size_t n)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	struct dirent *e;
	int found = -1;

	if (!d)
		return -1;
	while (found < 0 && (e = readdir(d))) {
		char path[512], name[64];
		ssize_t len;
		int fd;
		size_t s = 0;

		if (e->d_name[0] == '.')
			continue;
		fmt(path, sizeof(path), "/sys/class/virtio-ports/%s/name",
			 e->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		len = read(fd, name, sizeof(name) - 1);
		close(fd);
		if (len <= 0)
			continue;
		while (len > 0 && (name[len - 1] == '\n' || name[len - 1] == ' ' ||
				   name[len - 1] == '\t' || name[len - 1] == '\r'))
			len--;
		name[len] = 0;
		while (name[s] == ' ' || name[s] == '\t')
			s++;
		if (!strcmp(name + s, PORT_NAME)) {
			fmt(dev, n, "/dev/%s", e->d_name);
			found = 0;
		}
	}
	closedir(d);
	return found;
}

static int port_open_virtio(struct agent *a)
{
	struct timespec pause_ts = { 0, 100 * 1000000L };
	char dev[300];
	int i, fd;

	for (i = 0; i < DISCOVERY_TRIES; i++) {
		if (port_discover(dev, sizeof(dev)) == 0) {
			fd = open(dev, O_RDWR | O_CLOEXEC | O_NOCTTY);
			if (fd >= 0)
				return fd;
			agent_log("open %s: %s", dev, strerror(errno));
		}
		nanosleep(&pause_ts, NULL);
	}
	agent_log("no virtio port named \"" PORT_NAME "\" after 10 s");
	return -1;
}

static int port_open(struct agent *a, const struct options *o)
{
	struct stat st;
	int fd;

	if (o->port_fd >= 0) {
		a->host_mode = true;
		fd = o->port_fd;
	} else if (o->port_path) {
		if (stat(o->port_path, &st) == 0 && S_ISSOCK(st.st_mode)) {
			a->host_mode = true;
			fd = port_connect_socket(o->port_path);
		} else {
			fd = open(o->port_path, O_RDWR | O_CLOEXEC | O_NOCTTY);
		}
		if (fd < 0)
			agent_log("open %s: %s", o->port_path, strerror(errno));
	} else {
		fd = port_open_virtio(a);
	}
	if (fd < 0)
		return -1;
	if (set_nonblock_cloexec(fd) < 0) {
		agent_log("port fd %d: %s", fd, strerror(errno));
		return -1;
	}
	a->port_fd = fd;
	return 0;
}

static int add_timer(struct agent *a, struct watch *w, int *fdp,
		     void (*handle)(struct agent *, struct watch *, uint32_t))
{
	int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);

	if (fd < 0)
		return -1;
	*fdp = fd;
	w->fd = fd;
	w->handle = handle;
	return agent_watch(a, w, EPOLLIN);
}

static int loop_setup(struct agent *a, const sigset_t *mask)
{
	a->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (a->epfd < 0)
		return -1;
	a->sig_fd = signalfd(-1, mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (a->sig_fd < 0)
		return -1;
	a->sig_w.fd = a->sig_fd;
	a->sig_w.handle = on_signal;
	if (agent_watch(a, &a->sig_w, EPOLLIN) < 0)
		return -1;
	if (add_timer(a, &a->hb_w, &a->hb_timer_fd, on_heartbeat) < 0 ||
	    add_timer(a, &a->grace_w, &a->grace_timer_fd, on_grace) < 0 ||
	    add_timer(a, &a->retry_w, &a->retry_timer_fd, on_retry) < 0)
		return -1;
	a->port_w.fd = a->port_fd;
	a->port_w.handle = on_port;
	if (frame_reader_init(&a->in) < 0)
		return -1;
	arena_init(&a->arena, ARENA_LIMIT);
	return 0;
}

static void send_ready(struct agent *a)
{
	struct msg m = { .type = MSG_READY, .gen = PROTO_GEN_SEED };

	a->ready_time_ns = agent_clock_ns(CLOCK_BOOTTIME);
	m.u.ready.boot_time_ns = a->boot_time_ns;
	m.u.ready.init_time_ns = a->init_time_ns;
	m.u.ready.ready_time_ns = a->ready_time_ns;
	if (agent_send(a, 0, &m) < 0)
		agent_log("encode core.ready failed");
	port_flush(a);
}

/*
 * After every batch of events: write, let producers refill, re-arm.  When
 * they produced, wait for writability even if the port took everything:
 * a virtio port swallows a whole queue without EAGAIN, and a file read
 * stream has no fd event of its own to bring the loop back.
 */
static void after_events(struct agent *a)
{
	bool produced = false;

	port_flush(a);
	if (a->in_backlog && out_pending(a) < OUT_HARD_LIMIT) {
		handle_frames(a);
		port_flush(a);
	}
	if (agent_out_room(a)) {
		size_t before = out_pending(a);

		session_pump(a);
		fs_pump(a);
		produced = out_pending(a) != before;
		port_flush(a);
	}
	port_watch(a, produced);
}

/* One wait and its events; how many there were (the fuzzer's step). */
static int loop_step(struct agent *a, int timeout_ms)
{
	struct epoll_event evs[64];
	int n, i;

	n = epoll_wait(a->epfd, evs, 64, timeout_ms);
	if (n < 0) {
		if (errno != EINTR)
			agent_log("epoll_wait: %s", strerror(errno));
		return 0;
	}
	a->batch = evs;
	a->batch_n = n;
	for (i = 0; i < n; i++) {
		struct watch *w = evs[i].data.ptr;

		a->batch_next = i + 1;
		if (w)
			w->handle(a, w, evs[i].events);
	}
	a->batch_n = 0;
	after_events(a);
	return n;
}

static void loop_run(struct agent *a)
{
	for (;;) {
		if (a->shutting_down && shutdown_done(a))
			shutdown_finish(a);
		/* Idle for IDLE_TRIM_MS with buffers held: give them back. */
		if (!loop_step(a, a->reading_paused ? STDIN_CHECK_MS :
			       a->out.buf || a->in.buf ? IDLE_TRIM_MS : -1) &&
		    !a->reading_paused)
			agent_trim(a);
	}
}

#ifdef AGENTD_FUZZ
/* The stateful fuzzer (fuzz/fuzz_agent.c) runs the loop in-process. */
int agent_fuzz_setup(struct agent *a, int port_fd)
{
	sigset_t mask;

	a->runtime_dir = "/.msb";
	a->port_fd = port_fd;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	signal(SIGCHLD, SIG_DFL);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (set_nonblock_cloexec(port_fd) < 0 || loop_setup(a, &mask) < 0)
		return -1;
	port_update(a);
	return 0;
}

int agent_fuzz_step(struct agent *a, int timeout_ms)
{
	return loop_step(a, timeout_ms);
}

/* Between inputs: no streams, no shutdown, empty queues, a fresh stream
 * on the port (sessions were ended by the harness). */
void agent_fuzz_reset(struct agent *a)
{
	uint64_t ticks;

	fs_abort_all(a);
	a->shutting_down = false;
	a->shutdown_phase = 0;
	timer_arm(a->grace_timer_fd, 0, 0);
	if (read(a->grace_timer_fd, &ticks, sizeof(ticks)) < 0)
		ticks = 0;
	a->in.start = a->in.len = 0;
	a->in_backlog = false;
	out_reset(a);
	arena_reset(&a->arena);
	port_update(a);
}
#else

int main(int argc, char **argv)
{
	static struct agent agent;
	struct agent *a = &agent;
	struct options o = { .port_fd = -1 };
	sigset_t mask;
	int r;

	a->boot_time_ns = agent_clock_ns(CLOCK_BOOTTIME);
	a->runtime_dir = "/.msb";
	a->heartbeat_interval = 5;
	a->port_fd = a->epfd = a->sig_fd = -1;
	r = parse_options(argc, argv, a, &o);
	if (r)
		return r > 0 ? 0 : 2;
	a->pid1 = getpid() == 1 || o.init;

	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	/* Inherited SIG_IGN would discard these before the signalfd sees
	 * them (and auto-reap children for SIGCHLD). */
	raw_signal(SIGCHLD, SIG_DFL);
	raw_signal(SIGTERM, SIG_DFL);
	raw_signal(SIGINT, SIG_DFL);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	raw_signal(SIGPIPE, SIG_IGN);

	if (a->pid1) {
		uint64_t t1 = agent_clock_ns(CLOCK_BOOTTIME);

		init_run(a);
		a->init_time_ns = agent_clock_ns(CLOCK_BOOTTIME) - t1;
	} else {
		/* Orphans of our sessions come back to us, as under PID 1. */
		prctl(PR_SET_CHILD_SUBREAPER, 1);
	}
	ensure_std_fds();
	if (port_open(a, &o) < 0 || loop_setup(a, &mask) < 0) {
		if (a->port_fd >= 0)
			agent_log("setup: %s", strerror(errno));
		if (getpid() == 1)
			init_power_off();
		return 1;
	}
	init_trace(a, "port");
	clock_gettime(CLOCK_REALTIME, &a->last_activity);
	send_ready(a);
	init_trace(a, "ready");
	heartbeat_write(a);
	timer_arm(a->hb_timer_fd, a->heartbeat_interval * 1000,
		  a->heartbeat_interval * 1000);
	port_update(a);
	loop_run(a);
	return 0;
}
#endif
