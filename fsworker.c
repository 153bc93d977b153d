/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fsworker.c - filesystem requests off the event loop (issue 14).
 *
 * Why child processes: a system call on a filesystem that stops
 * answering (a stalled virtiofs daemon, NFS, a FUSE server, a dead disk)
 * sleeps in the kernel until that filesystem answers, so none may run on
 * the loop.  A thread stuck in the kernel cannot be given up (and the
 * agent has none); io_uring has no getdents, is often disabled in guest
 * kernels and would need this fallback anyway.  A forked child runs the
 * plain synchronous code of fsops.c, can be abandoned, and SIGKILL frees
 * it (FUSE, NFS and virtiofs waits are killable).  So:
 *
 *  - requests pass one lane in arrival order: the head request runs in a
 *    child while later ones wait, so on healthy filesystems requests take
 *    effect in the order the loop used to run them.  Stat, List, Mkdir,
 *    Remove, RemoveDir, Copy and Rename run on a pooled worker fed over a
 *    SOCK_SEQPACKET socketpair; the worker encodes its response frame
 *    itself and the loop only appends it to the output queue.  Read and
 *    Write get a child of their own that leaves the lane once the file is
 *    open, then streams through a pipe: file -> pipe -> data frames (read
 *    only while half the output queue is free, as before), or chunks ->
 *    bounded queue -> stream socket -> temporary file, renamed when the
 *    agent says so after the empty chunk;
 *  - a child that holds the lane for FS_STUCK_MS is left to finish on its
 *    own (its answer is still sent when it comes) and the lane moves on:
 *    a hung mount costs a process, never the agent;
 *  - core.exec.signal on the id of a request gives it up silently:
 *    queued, it is dropped; running, its child is killed; an upload is
 *    aborted and its child removes the temporary file.  Nothing more is
 *    sent for that id.  An upload with no chunk for FS_WRITE_IDLE_NS is
 *    aborted the same way.
 *
 * A child we stop tracking stays listed as JOB_DYING until it is reaped
 * and is SIGKILLed at its deadline: a pid is only signalled while it is
 * an unreaped child of ours, so never a reused one.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "agent.h"
#include "fmt.h"

#define FS_STUCK_MS      1000      /* the lane stops waiting for a child */
#define FS_STUCK_MAX     32        /* abandoned one-shot requests at once */
#define FS_QUEUE_MAX     256       /* requests waiting for the lane */
#define FS_IDLE_KEEP     2         /* idle workers kept */
#define FS_STREAMS_MAX   64        /* reads, and writes */
#define FS_FAILED_MAX    256       /* remembered failed write ids */
#define FS_DYING_MAX     64        /* given-up children not yet ended */
#define FS_WQ_MAX        (1u << 20)   /* queued upload bytes per stream */
#define FS_WQ_TOTAL_MAX  (16u << 20)  /* ... and over all streams */
#define FS_GIVE_UP_NS    (5ull * 1000000000)
#define FS_STREAM_WAIT_NS 1000000000ull  /* see fs_data_takes */
#define FS_WRITE_IDLE_NS (120ull * 1000000000)
#define FS_DYING_NS      (5000ull * 1000000)  /* time to clean up */
#define FS_TICK_MS       250
#define FS_PIPE_SIZE     (1 << 20)

enum job_kind { JOB_OP, JOB_READ, JOB_WRITE, JOB_FAILED, JOB_DYING };
enum job_state { JS_QUEUED, JS_LANE, JS_OUT };  /* OUT: not in the lane */
enum { RX_WAIT, RX_MORE, RX_FRAME, RX_OPENED, RX_REUSE, RX_END };

struct rx {             /* the frame a child is sending */
	uint8_t *buf;
	size_t len;
};

struct fs_worker {
	struct fs_worker *next;
	int pid;
	struct watch ctl;
	struct rx rx;
	struct fs_job *job;
};

struct fs_job {
	struct fs_job *next;
	uint32_t id;
	uint8_t kind, state;
	bool abandoned;    /* left the lane before its child answered */
	bool started;      /* its child exists (or existed) */
	bool eof;          /* write: the empty chunk came */
	bool committed;    /* write: the child was told to rename */
	bool ready;        /* read: the pipe may have data (not watched) */
	bool ctl_done;     /* read: the child said all it will say */
	bool killed;       /* dying: SIGKILL sent */
	bool reusable;     /* the child said it takes requests again */
	uint64_t seq;      /* arrival order */
	uint8_t *req;      /* until started: the request for the child */
	size_t req_len;
	uint64_t lane_since, progress, last_chunk;  /* progress: dying deadline */
	struct fs_worker *wk;  /* JOB_OP: the worker running it */
	int pid;           /* stream or dying child */
	struct watch ctl, pipe;
	struct rx rx;
	uint8_t *q;        /* write: bytes not yet in the pipe */
	size_t qhead, qlen, qcap;
};

static void lane_run(struct agent *a);

static struct fs_job *job_of_pipe(struct watch *w)
{
	return (struct fs_job *)((char *)w - offsetof(struct fs_job, pipe));
}

static struct fs_job *job_of_ctl(struct watch *w)
{
	return (struct fs_job *)((char *)w - offsetof(struct fs_job, ctl));
}

static uint64_t now_ns(void)
{
	return agent_clock_ns(CLOCK_MONOTONIC);
}

static const char *op_prefix(enum fs_op op)
{
	static const char *const p[] = { "stat", "opendir", "open",
		"open for write", "mkdir", "remove", "remove_dir", "copy",
		"rename" };

	return op <= FS_RENAME ? p[op] : "invalid request";
}

/* ------------------------------------------------------------------ */
/* Children                                                            */

static void close_fds(unsigned from, unsigned to)
{
	if (from <= to)
		syscall(SYS_close_range, from, to, 0);
}

/* Close every fd of the child but 0-2, x and y (-1: none). */
static void keep_only(int x, int y)
{
	int lo = x < y ? x : y, hi = x < y ? y : x;
	unsigned from = 3;

	if (lo >= 3) {
		close_fds(from, lo - 1);
		from = lo + 1;
	}
	if (hi >= 3 && hi != lo) {
		close_fds(from, hi - 1);
		from = hi + 1;
	}
	close_fds(from, ~0u);
}

static void set_blocking(int fd)
{
	int fl = fd >= 0 ? fcntl(fd, F_GETFL) : -1;

	if (fl >= 0)
		fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
}

int fs_fork_child(struct agent *a, int x, int y, bool die_with_us)
{
	/* _Fork, not fork: the agent has no threads, so no atfork handlers
	 * or libc locks to take (and musl's lock code, 2 KB, stays out). */
	int pid = _Fork();

	if (pid != 0)
		return pid;
	keep_only(x, y);
	set_blocking(x);
	set_blocking(y);
	if (die_with_us) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() == 1 && !a->pid1)
			_exit(0);
	}
	a->out.len = a->out_head = 0;  /* our responses only */
	return 0;
}

static void rx_reset(struct rx *rx)
{
	free(rx->buf);
	rx->buf = NULL;
	rx->len = 0;
}

/* One message from a child's socket into rx. */
static int rx_read(int fd, struct rx *rx)
{
	uint8_t *p;
	size_t need;
	ssize_t n;

	p = realloc(rx->buf, rx->len + FS_MSG_MAX);
	if (!p)
		return RX_END;
	rx->buf = p;
	n = recv(fd, p + rx->len, FS_MSG_MAX, MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return RX_WAIT;
	if (n < 0 && errno == ECONNRESET)
		return RX_MORE;  /* it left our 'C' unread; its frame follows */
	if (n <= 0)
		return RX_END;
	if (rx->len == 0 && n == 1 && (p[0] == 'O' || p[0] == 'R'))
		return p[0] == 'O' ? RX_OPENED : RX_REUSE;
	rx->len += (size_t)n;
	if (rx->len < 4)
		return RX_END;  /* a child sends a whole head at once */
	need = 4 + ((size_t)p[0] << 24 | (size_t)p[1] << 16 |
		    (size_t)p[2] << 8 | p[3]);
	if (need > FRAME_WIRE_MAX || rx->len > need)
		return RX_END;
	return rx->len == need ? RX_FRAME : RX_MORE;
}

/* Queue a child's response frame for id as it is. */
static void rx_forward(struct agent *a, uint32_t id, struct rx *rx)
{
	const uint8_t *p = rx->buf;

	if (rx->len >= 9 && ((uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 |
			     (uint32_t)p[6] << 8 | p[7]) == id &&
	    queue_reserve(&a->out.buf, &a->out_head, &a->out.len, &a->out.cap,
			  rx->len) == 0) {
		memcpy(a->out.buf + a->out.len, p, rx->len);
		a->out.len += rx->len;
	} else {
		agent_log("fs %u: response lost", id);
	}
	rx_reset(rx);
}

static void close_watch(struct agent *a, struct watch *w)
{
	if (w->events)
		agent_unwatch(a, w);
	if (w->fd >= 0)
		close(w->fd);
	w->fd = -1;
}

static int watch_fd(struct agent *a, struct watch *w, int fd, uint32_t ev,
		    void (*handle)(struct agent *, struct watch *, uint32_t))
{
	w->fd = fd;
	w->handle = handle;
	w->events = 0;
	return ev ? agent_watch(a, w, ev) : 0;
}

/* ------------------------------------------------------------------ */
/* The tick: stuck lane, idle uploads, dying children                  */

static void on_tick(struct agent *a, struct watch *w, uint32_t events);

static void tick_arm(struct agent *a, bool on)
{
	unsigned ms = on ? FS_TICK_MS : 0;
	struct itimerspec its = {
		.it_value = { 0, ms * 1000000L },
		.it_interval = { 0, ms * 1000000L },
	};

	if (!a->fs_tick.handle) {
		int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);

		if (fd < 0 || watch_fd(a, &a->fs_tick, fd, EPOLLIN, on_tick) < 0) {
			agent_log("fs timer: %s", strerror(errno));
			return;
		}
	}
	if (on != a->fs_tick_on)
		timerfd_settime(a->fs_tick.fd, 0, &its, NULL);
	a->fs_tick_on = on;
}

/* ------------------------------------------------------------------ */
/* Jobs                                                                */

static struct fs_job *job_find(const struct agent *a, uint32_t id)
{
	struct fs_job *j;

	for (j = a->fs_jobs; j; j = j->next)
		if (j->id == id && j->kind != JOB_DYING)
			return j;
	return NULL;
}

static struct fs_job *job_new(struct agent *a, uint32_t id, uint8_t kind)
{
	struct fs_job *j = calloc(1, sizeof(*j)), **pp;

	if (!j)
		return NULL;
	j->id = id;
	j->kind = kind;
	j->state = JS_OUT;
	j->seq = ++a->fs_seq;
	j->ctl.fd = j->pipe.fd = -1;
	j->last_chunk = now_ns();
	for (pp = &a->fs_jobs; *pp; pp = &(*pp)->next)
		;
	*pp = j;
	if (kind == JOB_WRITE)
		a->fs_nwrites++;
	if (kind == JOB_READ)
		a->fs_nreads++;
	tick_arm(a, true);
	return j;
}

static void dying_add(struct agent *a, int pid, bool kill_now)
{
	struct fs_job *j;

	if (pid <= 0)
		return;
	if (kill_now)
		kill(pid, SIGKILL);
	j = job_new(a, 0, JOB_DYING);
	if (!j) {
		kill(pid, SIGKILL);
		return;
	}
	j->pid = pid;
	j->killed = kill_now;
	j->progress = now_ns() + FS_DYING_NS;
}

static void job_unlink(struct agent *a, struct fs_job *j)
{
	struct fs_job **pp;

	for (pp = &a->fs_jobs; *pp; pp = &(*pp)->next) {
		if (*pp == j) {
			*pp = j->next;
			return;
		}
	}
}

static void lane_leave(struct agent *a, struct fs_job *j)
{
	if (j->state == JS_QUEUED)
		a->fs_nqueued--;
	if (a->fs_lane == j)
		a->fs_lane = NULL;
	j->state = JS_OUT;
}

static void queue_drop(struct agent *a, struct fs_job *j)
{
	a->fs_wq_total -= j->qlen - j->qhead;
	free(j->q);
	j->q = NULL;
	j->qhead = j->qlen = j->qcap = 0;
}

/*
 * Forget j.  Its child, if any, is listed as dying: closing its fds
 * makes a write child remove its temporary file and exit; kill_child
 * kills it now.  The caller deals with j->wk.
 */
static void job_free(struct agent *a, struct fs_job *j, bool kill_child)
{
	lane_leave(a, j);
	if (j->kind == JOB_WRITE)
		a->fs_nwrites--;
	if (j->kind == JOB_READ)
		a->fs_nreads--;
	if (j->abandoned)
		a->fs_nstuck--;
	if (j->wk)
		j->wk->job = NULL;
	close_watch(a, &j->ctl);
	close_watch(a, &j->pipe);
	queue_drop(a, j);
	rx_reset(&j->rx);
	free(j->req);
	if (j->pid > 0 && j->kind != JOB_DYING)
		dying_add(a, j->pid, kill_child);
	job_unlink(a, j);
	free(j);
}

/* Forget the oldest failed ids beyond FS_FAILED_MAX. */
static void failed_trim(struct agent *a)
{
	struct fs_job *j, *oldest = NULL;
	unsigned n = 0;

	for (j = a->fs_jobs; j; j = j->next) {
		if (j->kind != JOB_FAILED)
			continue;
		if (!oldest)
			oldest = j;
		n++;
	}
	if (n > FS_FAILED_MAX)
		job_free(a, oldest, false);
}

/* A write answered before its end: later chunks until the empty one
 * are dropped silently (the 6.4 [FIX]). */
static void write_failed(struct agent *a, struct fs_job *j)
{
	uint32_t id = j->id;
	bool eof = j->eof;

	job_free(a, j, false);
	if (!eof && job_new(a, id, JOB_FAILED))
		failed_trim(a);
}

static void fail_text(struct agent *a, struct fs_job *j, const char *text)
{
	fs_respond(a, j->id, j->kind == JOB_READ ? "read" :
		   j->kind == JOB_WRITE ? "write" : "fs", 0, text);
}

/* ------------------------------------------------------------------ */
/* Workers: one-shot requests                                          */

static void worker_drop(struct agent *a, struct fs_worker *w, bool kill_now)
{
	struct fs_worker **pp;

	for (pp = &a->fs_workers; *pp; pp = &(*pp)->next) {
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	}
	if (w->job)
		w->job->wk = NULL;
	close_watch(a, &w->ctl);
	rx_reset(&w->rx);
	dying_add(a, w->pid, kill_now);
	free(w);
}

/* A finished worker waits for the next request, or goes. */
static void worker_idle(struct agent *a, struct fs_worker *w)
{
	struct fs_worker *t;
	unsigned idle = 0;

	w->job = NULL;
	for (t = a->fs_workers; t; t = t->next)
		idle += !t->job;
	if (idle > FS_IDLE_KEEP || a->shutting_down)
		worker_drop(a, w, false);
}

static void on_worker(struct agent *a, struct watch *wt, uint32_t events);

/* A stream that ended cleanly gives its child back to the pool. */
static void stream_release(struct agent *a, struct fs_job *j)
{
	struct fs_worker *w = calloc(1, sizeof(*w));

	if (w && j->reusable && j->pid > 0 && j->ctl.fd >= 0) {
		if (j->ctl.events)
			agent_unwatch(a, &j->ctl);
		w->pid = j->pid;
		w->next = a->fs_workers;
		a->fs_workers = w;
		if (watch_fd(a, &w->ctl, j->ctl.fd, EPOLLIN, on_worker) == 0) {
			j->ctl.fd = -1;
			j->pid = 0;
			worker_idle(a, w);
		} else {
			w->ctl.fd = -1;
			a->fs_workers = w->next;
			free(w);
		}
	} else {
		free(w);
	}
	job_free(a, j, false);
}

static void on_worker(struct agent *a, struct watch *wt, uint32_t events)
{
	struct fs_worker *w = (struct fs_worker *)((char *)wt -
						   offsetof(struct fs_worker, ctl));
	struct fs_job *j;
	int r;

	do
		r = rx_read(w->ctl.fd, &w->rx);
	while (r == RX_MORE || r == RX_OPENED || r == RX_REUSE);
	if (r == RX_WAIT)
		return;
	j = w->job;
	if (r == RX_FRAME) {
		if (j) {
			rx_forward(a, j->id, &w->rx);
			job_free(a, j, false);
		}
		rx_reset(&w->rx);
		worker_idle(a, w);
	} else {
		if (j) {
			fs_respond(a, j->id, op_prefix(j->req ? j->req[4] : FS_STAT),
				   0, "the filesystem worker ended unexpectedly");
			job_free(a, j, false);
		}
		worker_drop(a, w, false);
	}
	lane_run(a);
}

/* A request comes with the stream's pipe, or alone (one-shot). */
static ssize_t recv_with_fd(int sock, uint8_t *buf, size_t n, int *fd)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} c;
	struct iovec iov = { buf, n };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = c.b, .msg_controllen = sizeof(c.b) };
	struct cmsghdr *cm;
	ssize_t r = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);

	*fd = -1;
	cm = r > 0 ? CMSG_FIRSTHDR(&mh) : NULL;
	if (cm && cm->cmsg_type == SCM_RIGHTS)
		memcpy(fd, CMSG_DATA(cm), sizeof(int));
	return r;
}

static int send_with_fd(int sock, const uint8_t *buf, size_t n, int fd)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} c;
	struct iovec iov = { (void *)buf, n };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = c.b, .msg_controllen = sizeof(c.b) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	return sendmsg(sock, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)n ?
		0 : -1;
}

/* A worker answers one-shot requests, and serves a stream when it is
 * handed one with its pipe. */
static void worker_main(struct agent *a, int sock)
{
	uint8_t buf[FS_MSG_MAX];
	int fd;

	for (;;) {
		ssize_t n = recv_with_fd(sock, buf, sizeof(buf), &fd);

		if (n <= 0)
			_exit(0);
		if (fd >= 0) {
			fs_child_stream(a, buf, (size_t)n, sock, fd);
			continue;
		}
		fs_child_op(a, buf, (size_t)n);
		fs_child_send(a, sock);
	}
}

static struct fs_worker *worker_spawn(struct agent *a)
{
	struct fs_worker *w = calloc(1, sizeof(*w));
	int sv[2];

	if (!w)
		return NULL;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK,
		       0, sv) < 0) {
		free(w);
		return NULL;
	}
	w->pid = fs_fork_child(a, sv[1], sv[1], true);
	if (w->pid == 0)
		worker_main(a, sv[1]);
	close(sv[1]);
	if (w->pid < 0 || watch_fd(a, &w->ctl, sv[0], EPOLLIN, on_worker) < 0) {
		close(sv[0]);
		dying_add(a, w->pid, true);
		free(w);
		return NULL;
	}
	w->next = a->fs_workers;
	a->fs_workers = w;
	return w;
}

/*
 * A read's data come through a pipe (the child splices the file in).  An
 * upload's go through a stream socket: a pipe says "writable" as soon as
 * one page is free, so agent and child would take turns every 64 KiB;
 * a socket only once three quarters of its buffer are free.
 */
static int data_channel(bool rd, int p[2])
{
	int size = FS_PIPE_SIZE;

	if (rd) {
		if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
			return -1;
		fcntl(p[0], F_SETPIPE_SZ, size);
		return 0;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0,
		       p) < 0)
		return -1;
	if (setsockopt(p[1], SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) < 0)
		setsockopt(p[1], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
	shutdown(p[1], SHUT_RD);
	return 0;
}

static struct fs_worker *worker_idle_one(struct agent *a)
{
	struct fs_worker *w;

	for (w = a->fs_workers; w && w->job; w = w->next)
		;
	return w ? w : worker_spawn(a);
}

static int op_start(struct agent *a, struct fs_job *j)
{
	struct fs_worker *w;
	int tries;

	for (tries = 0; tries < 2; tries++) {
		w = worker_idle_one(a);
		if (!w)
			return errno ? errno : ENOMEM;
		if (send(w->ctl.fd, j->req, j->req_len, MSG_DONTWAIT |
			 MSG_NOSIGNAL) == (ssize_t)j->req_len) {
			w->job = j;
			j->wk = w;
			return 0;
		}
		worker_drop(a, w, true);
	}
	return EPIPE;
}

/* ------------------------------------------------------------------ */
/* Read streams                                                        */

/* Data, then the child's response, then the end. */
static void read_end(struct agent *a, struct fs_job *j)
{
	if (j->rx.len) {
		rx_forward(a, j->id, &j->rx);
		stream_release(a, j);
		return;
	}
	fail_text(a, j, "the filesystem child ended unexpectedly");
	job_free(a, j, false);
}

static void on_read_pipe(struct agent *a, struct watch *w, uint32_t events)
{
	struct fs_job *j = job_of_pipe(w);

	agent_unwatch(a, w);
	j->ready = true;
}

/* One chunk of j's pipe; j may be freed. */
static void read_step(struct agent *a, struct fs_job *j)
{
	uint8_t buf[OUT_READ_CHUNK];
	struct msg m = { .type = MSG_FS_DATA, .gen = PROTO_GEN_SEED };
	ssize_t n = read(j->pipe.fd, buf, sizeof(buf));

	if (n > 0) {
		m.u.data.data.p = buf;
		m.u.data.data.n = (size_t)n;
		agent_send(a, j->id, &m);
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
		j->ready = false;
		if (agent_watch(a, &j->pipe, EPOLLIN) < 0) {
			fail_text(a, j, strerror(errno));
			job_free(a, j, true);
		}
		return;
	}
	close_watch(a, &j->pipe);
	j->ready = false;
	if (j->ctl_done)
		read_end(a, j);
}

static void on_stream_ctl(struct agent *a, struct watch *w, uint32_t events);
static void on_write_pipe(struct agent *a, struct watch *w, uint32_t events);

/*
 * An idle worker becomes the stream's child (a fork for every Read or
 * Write would cost each one's latency, and the agent's pages their COW
 * faults): it gets the pipe's other end with the request and its socket
 * becomes the stream's until the stream ends cleanly.
 */
static int stream_start(struct agent *a, struct fs_job *j)
{
	bool rd = j->kind == JOB_READ;
	struct fs_worker *w, **pp;
	int p[2], mine, theirs, r;

	if (data_channel(rd, p) < 0)
		return errno;
	mine = rd ? p[0] : p[1];
	theirs = rd ? p[1] : p[0];
	w = worker_idle_one(a);
	r = w ? send_with_fd(w->ctl.fd, j->req, j->req_len, theirs) : -1;
	close(theirs);
	if (r < 0) {
		close(mine);
		if (w)
			worker_drop(a, w, true);
		return EPIPE;
	}
	for (pp = &a->fs_workers; *pp != w; pp = &(*pp)->next)
		;
	*pp = w->next;
	agent_unwatch(a, &w->ctl);
	j->pid = w->pid;
	watch_fd(a, &j->ctl, w->ctl.fd, EPOLLIN, on_stream_ctl);
	free(w);
	watch_fd(a, &j->pipe, mine, 0, rd ? on_read_pipe : on_write_pipe);
	j->ready = rd;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Write streams                                                       */

/* Queued bytes into the pipe; after the empty chunk, tell the child to
 * put the file in place. */
static void write_flush(struct agent *a, struct fs_job *j)
{
	while (j->qlen > j->qhead && j->pipe.fd >= 0) {
		ssize_t n = write(j->pipe.fd, j->q + j->qhead, j->qlen - j->qhead);

		if (n > 0) {
			j->qhead += (size_t)n;
			a->fs_wq_total -= (size_t)n;
			j->progress = now_ns();
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			if (agent_watch_set(a, &j->pipe, EPOLLOUT) == 0)
				return;
		}
		/* The child stopped reading: its response says why. */
		close_watch(a, &j->pipe);
	}
	if (j->qlen == j->qhead)
		queue_drop(a, j);
	else if (j->pipe.fd < 0)
		queue_drop(a, j);
	agent_watch_set(a, &j->pipe, 0);
	if (j->eof && !j->committed) {
		close_watch(a, &j->pipe);
		j->committed = true;
		if (send(j->ctl.fd, "C", 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
			agent_log("fs %u: commit: %s", j->id, strerror(errno));
	}
}

static void on_write_pipe(struct agent *a, struct watch *w, uint32_t events)
{
	write_flush(a, job_of_pipe(w));
}

static void pipe_direct(struct fs_job *j, struct slice *d)
{
	ssize_t n;

	do
		n = write(j->pipe.fd, d->p, d->n);
	while (n < 0 && errno == EINTR);
	if (n > 0) {
		d->p += n;
		d->n -= (size_t)n;
		j->progress = now_ns();
	}
}

static int queue_append(struct agent *a, struct fs_job *j, struct slice d)
{
	if (j->qlen == j->qhead)
		j->progress = now_ns();
	if (queue_reserve(&j->q, &j->qhead, &j->qlen, &j->qcap, d.n) < 0)
		return -1;
	memcpy(j->q + j->qlen, d.p, d.n);
	j->qlen += d.n;
	a->fs_wq_total += d.n;
	return 0;
}

void fs_data(struct agent *a, uint32_t id, struct slice data)
{
	struct fs_job *j = job_find(a, id);
	char text[64];

	if (!j || (j->kind != JOB_WRITE && j->kind != JOB_FAILED)) {
		fmt(text, sizeof(text), "unknown write session: %u", id);
		fs_respond(a, id, NULL, 0, text);
		return;
	}
	if (j->kind == JOB_FAILED) {
		if (data.n == 0)
			job_free(a, j, false);
		return;
	}
	j->last_chunk = now_ns();
	if (data.n == 0)
		j->eof = true;
	else if (j->eof)
		return;  /* after the end (SPEC 6.4): not part of the file */
	else if (j->started && j->pipe.fd < 0)
		return;  /* the child failed; its response is on the way */
	else if (j->started && j->qlen == j->qhead)
		pipe_direct(j, &data);  /* what the pipe takes needs no copy */
	if (data.n && queue_append(a, j, data) < 0) {
		fail_text(a, j, strerror(ENOMEM));
		write_failed(a, j);
		return;
	}
	if (j->started)
		write_flush(a, j);
}

/*
 * A core.fs.data frame of IN_STREAM_MIN or more streams into its upload as
 * it arrives, when the upload exists as the frame begins (an unknown id
 * gets its one error for the whole frame).  The port waits while the
 * upload's queue holds FS_STREAM_MAX, unless the file took nothing for
 * FS_STREAM_WAIT_NS: then the data queues as an unstreamed frame's would,
 * under FS_WQ_MAX and fs_writes_blocked's give-up.  The rest of a frame
 * whose upload ended meanwhile is dropped, as an ended upload's data is.
 */
bool fs_data_takes(struct agent *a, uint32_t id)
{
	struct fs_job *j = job_find(a, id);

	return j && (j->kind == JOB_WRITE || j->kind == JOB_FAILED);
}

size_t fs_data_room(struct agent *a, uint32_t id)
{
	struct fs_job *j = job_find(a, id);

	if (j && j->kind == JOB_WRITE && j->qlen - j->qhead >= FS_STREAM_MAX &&
	    now_ns() - j->progress < FS_STREAM_WAIT_NS)
		return 0;
	return SIZE_MAX;
}

void fs_data_piece(struct agent *a, uint32_t id, struct slice data)
{
	if (fs_data_takes(a, id))
		fs_data(a, id, data);
}

bool fs_writes_blocked(struct agent *a, uint64_t now)
{
	bool total = a->fs_wq_total >= FS_WQ_TOTAL_MAX, blocked = false;
	struct fs_job *j, *next;

	if (!a->fs_wq_total)
		return false;
	for (j = a->fs_jobs; j; j = next) {
		size_t n = j->qlen - j->qhead;

		next = j->next;
		if (j->kind != JOB_WRITE || !n || (!total && n < FS_WQ_MAX))
			continue;
		if (now - j->progress < FS_GIVE_UP_NS) {
			blocked = true;
			continue;
		}
		agent_log("fs %u: the file took no data for 5 s while the port "
			  "waited; upload aborted", j->id);
		fail_text(a, j, "the filesystem took no data for 5 s; upload aborted");
		write_failed(a, j);
	}
	return blocked || a->fs_wq_total >= FS_WQ_TOTAL_MAX;
}

/* ------------------------------------------------------------------ */
/* Stream control sockets                                              */

static void on_stream_ctl(struct agent *a, struct watch *w, uint32_t events)
{
	struct fs_job *j = job_of_ctl(w);
	int r;

	for (;;) {
		r = rx_read(j->ctl.fd, &j->rx);
		if (r == RX_REUSE) {
			j->reusable = true;
			continue;
		}
		if (r == RX_OPENED) {
			if (j->state == JS_LANE) {
				lane_leave(a, j);
				lane_run(a);
			}
			continue;
		}
		if (r != RX_MORE)
			break;
	}
	if (r == RX_WAIT)
		return;
	if (j->state == JS_LANE) {
		lane_leave(a, j);
		lane_run(a);
	}
	if (r == RX_END)
		rx_reset(&j->rx);
	if (j->kind == JOB_READ) {
		/* Keep the response until the pipe is drained. */
		agent_unwatch(a, &j->ctl);
		j->ctl_done = true;
		if (j->pipe.fd < 0)
			read_end(a, j);
		return;
	}
	if (r == RX_FRAME)
		rx_forward(a, j->id, &j->rx);
	else
		fail_text(a, j, "the filesystem child ended unexpectedly");
	if (j->committed && r == RX_FRAME)
		stream_release(a, j);
	else if (j->committed)
		job_free(a, j, false);
	else
		write_failed(a, j);
}

/* ------------------------------------------------------------------ */
/* The lane                                                            */

static void job_start(struct agent *a, struct fs_job *j)
{
	int e;

	lane_leave(a, j);
	j->state = JS_LANE;
	a->fs_lane = j;
	j->lane_since = now_ns();
	j->started = true;
	e = j->kind == JOB_OP ? op_start(a, j) : stream_start(a, j);
	if (j->kind != JOB_OP) {
		free(j->req);
		j->req = NULL;
	}
	if (e) {
		fs_respond(a, j->id, op_prefix(j->kind == JOB_READ ? FS_READ :
			   j->kind == JOB_WRITE ? FS_WRITE : j->req[4]), e, NULL);
		if (j->kind == JOB_WRITE)
			write_failed(a, j);
		else
			job_free(a, j, true);
		return;
	}
	if (j->kind == JOB_WRITE)
		write_flush(a, j);
}

/* The next request starts only while the output queue is under its soft
 * limit: a batch of requests whose answers are large (Lists) must not
 * pile answers up while the host does not read.  fs_pump restarts it. */
static void lane_run(struct agent *a)
{
	while (!a->fs_lane && a->fs_nqueued && agent_out_room(a)) {
		struct fs_job *j, *first = NULL;

		for (j = a->fs_jobs; j; j = j->next)
			if (j->state == JS_QUEUED && (!first || j->seq < first->seq))
				first = j;
		if (!first)
			return;
		job_start(a, first);
	}
}

static void on_tick(struct agent *a, struct watch *w, uint32_t events)
{
	uint64_t ticks, now = now_ns();
	struct fs_job *j, *next;

	if (read(w->fd, &ticks, sizeof(ticks)) < 0)
		return;
	j = a->fs_lane;
	if (j && now - j->lane_since >= FS_STUCK_MS * 1000000ull &&
	    (j->kind != JOB_OP || a->fs_nstuck < FS_STUCK_MAX)) {
		if (j->kind == JOB_OP) {
			j->abandoned = true;
			a->fs_nstuck++;
		}
		lane_leave(a, j);
		lane_run(a);
	}
	for (j = a->fs_jobs; j; j = next) {
		next = j->next;
		if (j->kind == JOB_WRITE && !j->eof &&
		    now - j->last_chunk >= FS_WRITE_IDLE_NS) {
			agent_log("fs %u: no chunk for 120 s; upload aborted", j->id);
			job_free(a, j, false);
		} else if (j->kind == JOB_DYING && !j->killed && now >= j->progress) {
			kill(j->pid, SIGKILL);
			j->killed = true;
		}
	}
	if (!a->fs_jobs)
		tick_arm(a, false);
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */

static bool path_ok(const char *p)
{
	return !p || strlen(p) < PATH_MAX;
}

static uint8_t *request_encode(uint32_t id, const struct fs_request *rq,
			       size_t *len)
{
	const char *s1 = rq->op == FS_COPY || rq->op == FS_RENAME ? rq->src :
		rq->path, *s2 = rq->op == FS_COPY || rq->op == FS_RENAME ?
		rq->dst : "";
	size_t n1 = strlen(s1) + 1, n2 = strlen(s2) + 1;
	uint8_t *p = malloc(FS_REQ_HEAD + n1 + n2);

	if (!p)
		return NULL;
	memcpy(p, &id, 4);
	p[4] = (uint8_t)rq->op;
	p[5] = rq->has_mode;
	memcpy(p + 6, &rq->mode, 4);
	memcpy(p + FS_REQ_HEAD, s1, n1);
	memcpy(p + FS_REQ_HEAD + n1, s2, n2);
	*len = FS_REQ_HEAD + n1 + n2;
	return p;
}

static bool lane_stuck(const struct agent *a)
{
	return a->fs_lane && now_ns() - a->fs_lane->lane_since >=
		FS_STUCK_MS * 1000000ull;
}

bool fs_queue_full(const struct agent *a)
{
	return a->fs_nqueued >= FS_QUEUE_MAX && !lane_stuck(a);
}

/* Children past their deadline: killed, yet still on their filesystem. */
static unsigned dying_overdue(const struct agent *a)
{
	uint64_t now = now_ns();
	const struct fs_job *j;
	unsigned n = 0;

	for (j = a->fs_jobs; j; j = j->next)
		n += j->kind == JOB_DYING && now >= j->progress;
	return n;
}

static const char *limit_text(const struct agent *a, enum fs_op op)
{
	if (op == FS_WRITE && a->fs_nwrites >= FS_STREAMS_MAX)
		return "too many concurrent write sessions (limit 64)";
	if (op == FS_READ && a->fs_nreads >= FS_STREAMS_MAX)
		return "too many concurrent read sessions (limit 64)";
	if (a->fs_nqueued >= FS_QUEUE_MAX)
		return "too many requests waiting (limit 256)";
	/* A killed child whose request the filesystem already took stays
	 * until the filesystem answers: give up and retry must not pile
	 * them up without end. */
	if (dying_overdue(a) >= FS_DYING_MAX)
		return "too many given-up requests still on their filesystem "
			"(limit 64)";
	return NULL;
}

static void refuse(struct agent *a, uint32_t id, enum fs_op op, int e,
		   const char *text)
{
	fs_respond(a, id, op_prefix(op), e, text);
	if (op == FS_WRITE && job_new(a, id, JOB_FAILED))
		failed_trim(a);
}

void fs_request(struct agent *a, uint32_t id, const struct fs_request *rq)
{
	struct fs_job *j = job_find(a, id);
	const char *limit;
	uint8_t kind;
	char text[64];

	if (j && j->kind == JOB_FAILED) {
		job_free(a, j, false);  /* that exchange is over */
	} else if (j) {
		fmt(text, sizeof(text), "id %u is already in use", id);
		fs_respond(a, id, "invalid request", 0, text);
		return;
	}
	if (rq->op > FS_RENAME) {
		fs_respond(a, id, "invalid request", 0,
			   "operation not supported in this generation");
		return;
	}
	if (rq->op == FS_COPY || rq->op == FS_RENAME ? !rq->src || !rq->dst :
	    !rq->path) {
		fs_respond(a, id, "invalid request", 0, "missing path");
		return;
	}
	if (!path_ok(rq->path) || !path_ok(rq->src) || !path_ok(rq->dst)) {
		refuse(a, id, rq->op, ENAMETOOLONG, NULL);
		return;
	}
	limit = limit_text(a, rq->op);
	if (limit) {
		refuse(a, id, rq->op, 0, limit);
		return;
	}
	kind = rq->op == FS_READ ? JOB_READ : rq->op == FS_WRITE ? JOB_WRITE :
		JOB_OP;
	j = job_new(a, id, kind);
	if (j)
		j->req = request_encode(id, rq, &j->req_len);
	if (!j || !j->req) {
		if (j)
			job_free(a, j, false);
		refuse(a, id, rq->op, ENOMEM, NULL);
		return;
	}
	j->state = JS_QUEUED;
	a->fs_nqueued++;
	lane_run(a);
}

/* ------------------------------------------------------------------ */
/* Output room, cancel, abort                                          */

/* Read streams take the output queue only down to half its room:
 * sessions re-arm their pipes in session_pump and read them on the next
 * event, so if reads filled the queue every round an interactive exec
 * would find no room, ever. */
static bool read_room(const struct agent *a)
{
	return agent_out_room(a) > OUT_SOFT_LIMIT / 2;
}

void fs_pump(struct agent *a)
{
	bool progress = true;

	lane_run(a);

	while (progress && read_room(a)) {
		struct fs_job *j, *next;
		uint64_t after = a->fs_rr;

		/* Round-robin: start after the stream served last. */
		progress = false;
		for (j = a->fs_jobs; j; j = next) {
			next = j->next;
			if (j->kind != JOB_READ || !j->ready || j->pipe.fd < 0)
				continue;
			if (j->seq <= after && after)
				continue;
			if (!read_room(a))
				return;
			a->fs_rr = j->seq;
			read_step(a, j);
			progress = true;
		}
		if (!progress && after) {
			a->fs_rr = 0;
			progress = true;
		}
	}
}

bool fs_id_live(const struct agent *a, uint32_t id)
{
	const struct fs_job *j = job_find(a, id);

	return j && j->kind != JOB_FAILED;
}

static void job_cancel(struct agent *a, struct fs_job *j)
{
	if (j->wk)
		worker_drop(a, j->wk, true);
	job_free(a, j, j->kind != JOB_WRITE);
}

bool fs_cancel(struct agent *a, uint32_t id)
{
	struct fs_job *j = job_find(a, id);

	if (!j)
		return false;
	job_cancel(a, j);
	lane_run(a);
	return true;
}

void fs_abort_all(struct agent *a)
{
	struct fs_job *j, *next;

	for (j = a->fs_jobs; j; j = next) {
		next = j->next;
		if (j->kind != JOB_DYING)
			job_cancel(a, j);
	}
	if (a->shutting_down)
		while (a->fs_workers)
			worker_drop(a, a->fs_workers, false);
}

void fs_reaped(struct agent *a, int pid)
{
	struct fs_worker *w;
	struct fs_job *j;

	for (w = a->fs_workers; w; w = w->next)
		if (w->pid == pid)
			w->pid = 0;
	for (j = a->fs_jobs; j; j = j->next) {
		if (j->pid != pid)
			continue;
		j->pid = 0;
		if (j->kind == JOB_DYING) {
			job_unlink(a, j);
			free(j);
		}
		return;
	}
}

bool fs_children_left(const struct agent *a)
{
	const struct fs_job *j;

	for (j = a->fs_jobs; j; j = j->next)
		if (j->kind == JOB_DYING && j->pid > 0)
			return true;
	return false;
}

#ifdef AGENTD_FUZZ
/* fuzz/fuzz_agent.c between inputs: every request given up, every
 * worker let go (kill_now: and every child still listed killed), so
 * the next input starts with no fs child and no fs fd. */
void fs_fuzz_reset(struct agent *a, bool kill_now)
{
	struct fs_job *j;

	fs_abort_all(a);
	while (a->fs_workers)
		worker_drop(a, a->fs_workers, kill_now);
	for (j = a->fs_jobs; kill_now && j; j = j->next) {
		if (j->kind == JOB_DYING && j->pid > 0 && !j->killed) {
			kill(j->pid, SIGKILL);
			j->killed = true;
		}
	}
}
#endif
