/* SPDX-License-Identifier: Apache-2.0 */
/*
 * agent.h - the one agent struct and the interfaces between the event
 * loop (agentd.c) and the modules it dispatches to (session.c, fsops.c,
 * heartbeat.c, init.c).
 */
#ifndef AGENTD_AGENT_H
#define AGENTD_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "protocol.h"

struct epoll_event;

/*
 * Output towards the host.  Bulk producers (child output, file reads)
 * produce only while out_len < OUT_SOFT_LIMIT; control frames (started,
 * exited, fs responses) are always queued.  The port is not read while
 * out_len >= OUT_HARD_LIMIT, so the queue stays bounded: every request
 * the host can make while we still read adds at most one bounded frame.
 */
#define OUT_SOFT_LIMIT   (256u * 1024)
#define OUT_HARD_LIMIT   (8u * 1024 * 1024)
#define OUT_READ_CHUNK   (64u * 1024)   /* one read from a file */
/* At most one read of a child's output (what the soft limit leaves, at
 * least OUT_READ_CHUNK), sent as one data frame with no copy: read straight
 * into the queue behind room for the frame head (docs/PROTOCOL.md 12). */
#define EXEC_READ_CHUNK  (256u * 1024)
/* A child's stdout or stdin pipe grows to this once it carries bulk data
 * (fewer wakeups per byte); refused sizes are quietly kept. */
#define PIPE_BULK_SIZE   (1024u * 1024)
/*
 * A data frame whose payload is at least IN_STREAM_MIN bytes and which has
 * not fully arrived goes to its consumer as it arrives (struct in_sink).
 * The port is not read while the consumer takes no more: a child's stdin
 * queue then holds at most STDIN_STREAM_MAX plus one port read (unless the
 * child read nothing for a second, see session_stdin_room), and the frame
 * reader holds heads plus one read instead of the whole frame.
 */
#define IN_STREAM_MIN    (64u * 1024)
#define STDIN_STREAM_MAX (256u * 1024)
#define FS_STREAM_MAX    (256u * 1024)  /* an upload's queue, likewise */
/* Buffers above their idle size go back to the allocator after this long
 * without events. */
#define IDLE_TRIM_MS     250

/* An fd registered with epoll: data.ptr points at one of these. */
struct agent;
struct watch {
	int fd;
	void (*handle)(struct agent *a, struct watch *w, uint32_t events);
	uint32_t events;  /* as registered; 0 = not in the epoll set */
};

struct session;    /* session.c */
struct fs_job;     /* fsworker.c */
struct fs_worker;

/* A consumer of streamed data frames of one type (see IN_STREAM_MIN).
 * takes: whether a frame for this id streams at all (NULL: every id; a
 * frame that does not is buffered whole and handled as one); room: 0 =
 * not now (the port waits), else take any amount; put gets the data in
 * order, in pieces, never empty. */
struct in_sink {
	enum msg_type type;
	bool (*takes)(struct agent *a, uint32_t id);
	size_t (*room)(struct agent *a, uint32_t id);
	void (*put)(struct agent *a, uint32_t id, struct slice data);
};

struct agent {
	int epfd;
	int port_fd;
	int sig_fd;
	int hb_timer_fd;
	int grace_timer_fd;  /* shutdown grace, then the final wait */
	int retry_timer_fd;  /* PID 1: re-poll a disconnected port */
	bool pid1;           /* running as PID 1 (or --init) */
	bool host_mode;      /* --port-fd / socket: EOF ends the process */
	bool port_eof;       /* not watched: host gone (PID 1: re-polled) */
	bool port_down;      /* PID 1: disconnect logged, not yet back */
	bool reading_paused; /* backpressure on the port */
	bool in_backlog;     /* complete frames wait in `in` (output full) */
	bool shutting_down;
	int shutdown_phase;  /* 1: SIGTERM sent, 2: SIGKILL sent */
	bool sessions_paused; /* some child is not read for lack of room */
	struct watch port_w, sig_w, hb_w, grace_w, retry_w;
	struct epoll_event *batch;  /* events being handled (agent_unwatch) */
	int batch_next, batch_n;

	struct frame_reader in;
	const struct in_sink *in_sink;  /* consumer of the frame streaming in */
	uint32_t in_sink_id;
	struct cbor_out out;  /* encoded frames waiting for the port */
	size_t out_head;      /* first byte of out.buf not yet written */

	struct arena arena;   /* per-frame decode scratch */

	const char *runtime_dir;       /* "/.msb" or --runtime-dir */
	unsigned heartbeat_interval;   /* seconds */
	struct timespec last_activity; /* CLOCK_REALTIME of last port read */

	uint64_t boot_time_ns, init_time_ns, ready_time_ns;
	uint64_t trace_ns;  /* agentd.trace=1: end of the last boot step; 0 = off */

	struct session *sessions;      /* live exec sessions */
	unsigned nsessions;
	size_t stdin_queued;           /* bytes queued for all children */

	/* fsworker.c: requests from arrival to response, pooled workers */
	struct fs_job *fs_jobs, *fs_lane;
	struct fs_worker *fs_workers;
	unsigned fs_nwrites, fs_nreads, fs_nqueued, fs_nstuck;
	uint64_t fs_seq, fs_rr;
	size_t fs_wq_total;            /* upload bytes waiting for pipes */
	struct watch fs_tick;
	bool fs_tick_on;
	int hb_pid;                    /* heartbeat child, 0 = none */
};

/* ---- agentd.c: output and registration helpers for the modules ---- */

/* Queue one message for the host on id.  -1 only when it cannot be
 * encoded (larger than a frame); the caller then reports that error. */
int agent_send(struct agent *a, uint32_t id, const struct msg *m);
/* Room for n more bytes at len in a byte queue whose bytes before head
 * are consumed: compacts, then grows by doubling.  0, or -1 (no memory). */
int queue_reserve(uint8_t **buf, size_t *head, size_t *len, size_t *cap,
		  size_t n);
/* Room left under the soft limit, for bulk producers. */
size_t agent_out_room(const struct agent *a);
/* A data frame read straight into the queue: where up to max bytes go,
 * then the frame completed with the n bytes put there (0 = nothing). */
uint8_t *agent_data_space(struct agent *a, enum msg_type t, size_t max);
void agent_data_commit(struct agent *a, uint32_t id, enum msg_type t,
		       size_t max, size_t n);
/* epoll registration; w->events tracks what is registered.  Unwatching
 * also drops events of w still pending in the current batch, so a watch
 * may be freed right after agent_unwatch. */
int agent_watch(struct agent *a, struct watch *w, uint32_t events);
int agent_rewatch(struct agent *a, struct watch *w, uint32_t events);
void agent_unwatch(struct agent *a, struct watch *w);
/* Register, modify or remove as needed so exactly events are watched;
 * 0 removes the fd (so EPOLLHUP cannot spin on a paused fd). */
int agent_watch_set(struct agent *a, struct watch *w, uint32_t events);
void agent_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
uint64_t agent_clock_ns(int clock_id);

#ifdef AGENTD_FUZZ
/* fuzz/fuzz_agent.c: the loop without main (port_fd: a connected socket). */
int agent_fuzz_setup(struct agent *a, int port_fd);
int agent_fuzz_step(struct agent *a, int timeout_ms);  /* events handled */
void agent_fuzz_reset(struct agent *a);
/* fsworker.c: give up all fs work; kill_now: SIGKILL every fs child. */
void fs_fuzz_reset(struct agent *a, bool kill_now);
#endif

/* ---- session.c: exec sessions ---- */
void session_exec(struct agent *a, uint32_t id, const struct exec_request *rq);
void session_stdin(struct agent *a, uint32_t id, struct slice data);
size_t session_stdin_room(struct agent *a, uint32_t id);
void session_resize(struct agent *a, uint32_t id, uint16_t rows, uint16_t cols);
void session_signal(struct agent *a, uint32_t id, int32_t sig);
/* A reaped child: routes the status to its session, if any. */
void session_reaped(struct agent *a, int pid, int status);
/* Output room appeared: resume reading children paused by backpressure. */
void session_pump(struct agent *a);
bool session_id_live(const struct agent *a, uint32_t id);
void sessions_terminate(struct agent *a, int sig);
/* True while stdin queues are over their bounds (the port is not read);
 * gives up on a child that consumed no stdin for 5 s (SPEC 5.3). */
bool sessions_stdin_blocked(struct agent *a, uint64_t now_ns);

/* ---- fsworker.c: filesystem requests, run in child processes ---- */
void fs_request(struct agent *a, uint32_t id, const struct fs_request *rq);
void fs_data(struct agent *a, uint32_t id, struct slice data);
bool fs_data_takes(struct agent *a, uint32_t id);
size_t fs_data_room(struct agent *a, uint32_t id);
void fs_data_piece(struct agent *a, uint32_t id, struct slice data);
/* Output room appeared: continue read streams, fairly. */
void fs_pump(struct agent *a);
bool fs_id_live(const struct agent *a, uint32_t id);
/* core.exec.signal on a live fs id: give it up silently.  False when id
 * is not an fs request. */
bool fs_cancel(struct agent *a, uint32_t id);
/* Disconnect or shutdown: abort every request, remove temporary files. */
void fs_abort_all(struct agent *a);
/* True while upload queues are over their bounds (the port is not read);
 * gives up on an upload whose file took nothing for 5 s. */
bool fs_writes_blocked(struct agent *a, uint64_t now_ns);
/* The lane's queue is full but moving: take no more frames for now (a
 * stuck lane refuses requests instead). */
bool fs_queue_full(const struct agent *a);
void fs_reaped(struct agent *a, int pid);
/* Children told to stop that have not exited yet. */
bool fs_children_left(const struct agent *a);
/* fork() for a child that does blocking filesystem work: keeps only fds
 * 0-2, x and y (made blocking); die_with_us: killed when the agent ends. */
int fs_fork_child(struct agent *a, int x, int y, bool die_with_us);

/* ---- fsops.c: the operations, as the children run them ---- */
#define FS_MSG_MAX   (64u * 1024)  /* one message on a child's socket */
#define FS_REQ_HEAD  10            /* id, op, has_mode, mode; then paths */
void fs_child_op(struct agent *a, const uint8_t *req, size_t n);
/* Serve one Read or Write; returns when it ended cleanly. */
void fs_child_stream(struct agent *a, const uint8_t *req, size_t n, int ctl,
		     int data);
void fs_child_send(struct agent *a, int fd);
/* A response for id: "prefix: text", "prefix: strerror(e) (os error e)",
 * or text alone when prefix is NULL. */
void fs_respond(struct agent *a, uint32_t id, const char *prefix, int e,
		const char *text);

/* ---- heartbeat.c ---- */
/* Starts a child that writes the file, unless the last one still runs. */
void heartbeat_write(struct agent *a);
void heartbeat_reaped(struct agent *a, int pid);
/* Format a CLOCK_REALTIME time as SPEC 8 says; returns length. */
size_t heartbeat_format_time(char *buf, size_t n, const struct timespec *ts);

/* ---- init.c: PID 1 duties ---- */
/* Section 10 in order; on a fatal error prints and powers off (PID 1). */
int init_run(struct agent *a);
/* agentd.trace=1: print how long the boot step just done took. */
void init_trace(struct agent *a, const char *step);
void init_power_off(void) __attribute__((noreturn));
/* Shutdown: sync, unmount or remount read-only every real filesystem, in
 * a child given a deadline, so a hung filesystem cannot stop the
 * power-off. */
void init_unmount_all(void);

#endif
