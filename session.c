/* SPDX-License-Identifier: Apache-2.0 */
/*
 * session.c - exec sessions (SPEC 5): spawning in pipe or PTY mode,
 * stdin queues, output with backpressure, signals, resize, exit status.
 *
 * Life of a session: clone, then wait for the close-on-exec error pipe.
 * The agent never waits for the child itself (no vfork): a guest process
 * can stop the child, or a hung filesystem can block it, before its exec.
 * EOF on it means exec succeeded: send started and read output.  Data on
 * it means a step before exec failed: at EOF, send exited -1 and forget
 * the session (the reaper discards the status).  A started session ends once
 * the child was reaped and every output fd reached EOF (pipes) or EIO
 * (PTY master); only then is exited sent, after the last output byte.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "agent.h"
#include "fmt.h"
#include "rawsys.h"
#include "userdb.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/asan_interface.h>
#define CHILD_MEM_ASAN
#endif
#endif

#define STDIN_SESSION_MAX  (8u * 1024 * 1024)
#define STDIN_TOTAL_MAX    (64u * 1024 * 1024)
#define STDIN_GIVE_UP_NS   (5ull * 1000000000)
#define STDIN_STREAM_WAIT_NS 1000000000ull
#define MAX_GROUPS         1024
/* execve's usual bound on argv plus envp (a quarter of an 8 MiB stack) */
#define ENV_MAX_ENTRIES    65536
#define ENV_MAX_BYTES      (2u * 1024 * 1024)
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

extern char **environ;

/* What the child does between clone and exec, all prepared beforehand. */
struct spawn {
	char **argv;
	char **envp;        /* room for one more entry (HOME) */
	size_t nenv;
	long home_slot;     /* index of HOME= in envp, or -1 */
	bool home_given;    /* by the request: the user's does not replace it */
	const char *path;   /* PATH for a bare cmd */
	const char *cwd;
	const char *user;   /* user spec, trimmed; looked up by the child */
	const char *group;  /* its group part, or NULL */
	struct { int res; struct rlimit lim; } *limits;
	size_t nlimits;
	bool tty;
};

/* Written by the child on the error pipe when a step before exec fails. */
struct child_error {
	int stage;
	int err;
};

enum stage { ST_SETSID, ST_CTTY, ST_DUP, ST_USER, ST_GROUP, ST_CWD,
	     ST_GROUPS, ST_GID, ST_UID, ST_RLIMIT, ST_EXEC };

static const char *const stage_names[] = {
	"setsid", "set controlling terminal", "dup2", "guest user not found",
	"guest group not found", "chdir", "setgroups", "setgid", "setuid",
	"setrlimit", "exec",
};

struct stdin_queue {
	uint8_t *buf;
	size_t head, len, cap;
};

struct session {
	struct session *next;
	void *child_mem;      /* the child's stack and data until EOF on errp */
	size_t child_mem_len;
	int fail_stage;       /* from the error pipe, or -1 */
	int fail_err;
	uint32_t id;
	pid_t pid;
	bool tty;
	bool started;
	bool reaped;
	int status;
	bool stdin_eof;       /* host sent EOF: close once the queue drains */
	bool stdin_dead;      /* closed or given up: drop further bytes */
	bool out_paused;      /* not read for lack of output room */
	bool pty_eof;         /* master read EIO: all slave ends closed */
	bool out_grown, in_grown;  /* pipe size raised (or refused) once */
	uint64_t stdin_since; /* last stdin progress, CLOCK_MONOTONIC ns */
	struct stdin_queue q;
	struct watch errp;    /* exec error pipe, until exec or failure */
	struct watch out;     /* stdout pipe, or the PTY master */
	struct watch err;     /* stderr pipe; -1 for a PTY */
	struct watch in;      /* stdin pipe; -1 for a PTY (the master) */
	char name[64];        /* cmd, for log lines */
};

/* ---- small helpers ---- */

static struct session *session_of(struct watch *w, size_t off)
{
	return (struct session *)((char *)w - off);
}

static struct session *session_find(const struct agent *a, uint32_t id)
{
	struct session *s;

	for (s = a->sessions; s; s = s->next)
		if (s->id == id)
			return s;
	return NULL;
}

bool session_id_live(const struct agent *a, uint32_t id)
{
	return session_find(a, id) != NULL;
}

static void close_watch(struct agent *a, struct watch *w)
{
	if (w->fd < 0)
		return;
	agent_unwatch(a, w);
	close(w->fd);
	w->fd = -1;
}

static void send_exited(struct agent *a, uint32_t id, int status, bool valid)
{
	struct msg m = { .type = MSG_EXEC_EXITED, .gen = PROTO_GEN_SEED };

	m.u.exec_exited.code = -1;
	if (valid && WIFEXITED(status)) {
		m.u.exec_exited.code = WEXITSTATUS(status);
	} else if (valid && WIFSIGNALED(status)) {
		m.u.exec_exited.has_signal = true;
		m.u.exec_exited.signal = WTERMSIG(status);
	}
	agent_send(a, id, &m);
}

static void stdin_discard(struct agent *a, struct session *s)
{
	a->stdin_queued -= s->q.len - s->q.head;
	free(s->q.buf);
	memset(&s->q, 0, sizeof(s->q));
}

static void session_free(struct agent *a, struct session *s)
{
	struct session **pp;

	for (pp = &a->sessions; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	}
	a->nsessions--;
	/* s->child_mem is unmapped at EOF on the error pipe; still mapped
	 * here only if the child may be on it (see session_exec). */
	close_watch(a, &s->errp);
	close_watch(a, &s->out);
	close_watch(a, &s->err);
	close_watch(a, &s->in);
	stdin_discard(a, s);
	free(s);
}

/* Exited goes out only after the last output byte and the reap. */
static void session_maybe_finish(struct agent *a, struct session *s)
{
	bool out_open = s->tty ? !s->pty_eof : s->out.fd >= 0;

	if (!s->started || !s->reaped || out_open || s->err.fd >= 0)
		return;
	send_exited(a, s->id, s->status, true);
	session_free(a, s);
}

/* ---- epoll interest ---- */

static size_t stdin_pending(const struct session *s)
{
	return s->q.len - s->q.head;
}

static void session_update(struct agent *a, struct session *s)
{
	bool room = agent_out_room(a) > 0;
	uint32_t out_ev = 0, err_ev = 0, in_ev = 0;

	if (s->started) {
		if (room) {
			out_ev = EPOLLIN;
			err_ev = EPOLLIN;
		} else {
			s->out_paused = true;
			a->sessions_paused = true;
		}
	}
	if (stdin_pending(s)) {
		if (s->tty)
			out_ev |= EPOLLOUT;
		else
			in_ev = EPOLLOUT;
	}
	if (s->out.fd >= 0 && !s->pty_eof)
		agent_watch_set(a, &s->out, out_ev);
	if (s->err.fd >= 0)
		agent_watch_set(a, &s->err, err_ev);
	if (s->in.fd >= 0)
		agent_watch_set(a, &s->in, in_ev);
}

void session_pump(struct agent *a)
{
	struct session *s;

	if (!a->sessions_paused || !agent_out_room(a))
		return;
	a->sessions_paused = false;
	for (s = a->sessions; s; s = s->next) {
		if (s->out_paused) {
			s->out_paused = false;
			session_update(a, s);
		}
	}
}

/* ---- output ---- */

/* A pipe that filled up grows once, so bulk data wakes us less often. */
static void pipe_grow(int fd, bool *grown)
{
	if (*grown)
		return;
	*grown = true;
	fcntl(fd, F_SETPIPE_SZ, PIPE_BULK_SIZE);
}

/* One read of a child's output, straight into the output queue; false
 * once the fd reached its end. */
static bool output_read(struct agent *a, struct session *s, struct watch *w,
			enum msg_type t)
{
	/* as much as the soft limit leaves, at least a file read's worth:
	 * the queue stays under the same bound as with 64 KiB reads */
	size_t max = agent_out_room(a);
	uint8_t *p;
	ssize_t n;

	max = max < OUT_READ_CHUNK ? OUT_READ_CHUNK :
	      max > EXEC_READ_CHUNK ? EXEC_READ_CHUNK : max;
	p = agent_data_space(a, t, max);
	if (!p)
		return true;
	n = read(w->fd, p, max);
	if (n > 0) {
		agent_data_commit(a, s->id, t, max, n);
		if (n >= 65536 && w == &s->out && !s->tty)
			pipe_grow(w->fd, &s->out_grown);
		return true;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return true;
	/* 0, or EIO from a PTY master whose slave ends are all closed */
	if (n < 0 && errno != EIO)
		agent_log("exec %u: read output: %s", s->id, strerror(errno));
	return false;
}

static void stdin_flush(struct agent *a, struct session *s);
static void stdin_close(struct agent *a, struct session *s);

static void on_output(struct agent *a, struct session *s, struct watch *w,
		      uint32_t events, enum msg_type t)
{
	if (s->tty && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && stdin_pending(s))
		stdin_flush(a, s);
	if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)) || w->fd < 0 || s->pty_eof)
		return;
	if (!agent_out_room(a)) {
		session_update(a, s);
		return;
	}
	/* EPOLLHUP alone is no end of data (SPEC 5.4): read to EOF/EIO. */
	if (output_read(a, s, w, t))
		return;
	if (s->tty) {
		/* Closing the master would hang up the terminal and SIGHUP a
		 * session leader that closed its fds but has not exited yet:
		 * keep it open until the session ends. */
		agent_unwatch(a, w);
		s->pty_eof = true;
		stdin_close(a, s);
	} else {
		close_watch(a, w);
	}
	session_maybe_finish(a, s);
}

static void on_stdout(struct agent *a, struct watch *w, uint32_t events)
{
	struct session *s = session_of(w, offsetof(struct session, out));

	on_output(a, s, w, events, MSG_EXEC_STDOUT);
}

static void on_stderr(struct agent *a, struct watch *w, uint32_t events)
{
	struct session *s = session_of(w, offsetof(struct session, err));

	on_output(a, s, w, events, MSG_EXEC_STDERR);
}

/* ---- stdin ---- */

static void stdin_close(struct agent *a, struct session *s)
{
	stdin_discard(a, s);
	s->stdin_dead = true;
	if (!s->tty)
		close_watch(a, &s->in);
}

/* Write what the child takes now: bytes written, or -1 once its stdin
 * is gone (EPIPE, or EIO from a dead PTY: dropped, as the seed does). */
static ssize_t stdin_write(struct session *s, const uint8_t *p, size_t n)
{
	int fd = s->tty ? (s->pty_eof ? -1 : s->out.fd) : s->in.fd;
	size_t done = 0;
	ssize_t k;

	while (done < n && fd >= 0) {
		k = write(fd, p + done, n - done);
		if (k > 0) {
			done += k;
			s->stdin_since = agent_clock_ns(CLOCK_MONOTONIC);
			continue;
		}
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && errno == EAGAIN && !s->tty && !s->in_grown) {
			pipe_grow(fd, &s->in_grown);
			continue;
		}
		if (k < 0 && errno == EAGAIN)
			break;
		return -1;
	}
	return done;
}

static void stdin_flush(struct agent *a, struct session *s)
{
	ssize_t n = stdin_write(s, s->q.buf + s->q.head, stdin_pending(s));

	if (n < 0) {
		stdin_close(a, s);
	} else {
		s->q.head += n;
		a->stdin_queued -= n;
	}
	if (!stdin_pending(s)) {
		/* rarely used now that stdin is written straight from the
		 * frame: give it back */
		free(s->q.buf);
		memset(&s->q, 0, sizeof(s->q));
		if (s->stdin_eof && !s->tty)
			close_watch(a, &s->in);
	}
	session_update(a, s);
}

static void on_stdin(struct agent *a, struct watch *w, uint32_t events)
{
	stdin_flush(a, session_of(w, offsetof(struct session, in)));
}

static int stdin_append(struct session *s, struct slice data)
{
	struct stdin_queue *q = &s->q;

	if (queue_reserve(&q->buf, &q->head, &q->len, &q->cap, data.n) < 0)
		return -1;
	memcpy(q->buf + q->len, data.p, data.n);
	q->len += data.n;
	return 0;
}

void session_stdin(struct agent *a, uint32_t id, struct slice data)
{
	struct session *s = session_find(a, id);
	ssize_t n;

	if (!s || s->stdin_dead || s->stdin_eof)
		return;
	if (!data.n) {
		if (s->tty)
			return;  /* a terminal stays open; hosts send ^D */
		s->stdin_eof = true;
		if (!stdin_pending(s))
			close_watch(a, &s->in);
		return;
	}
	if (!stdin_pending(s)) {
		/* nothing queued: write straight from the frame */
		s->stdin_since = agent_clock_ns(CLOCK_MONOTONIC);
		n = stdin_write(s, data.p, data.n);
		if (n < 0) {
			stdin_close(a, s);
			session_update(a, s);
			return;
		}
		data.p += n;
		data.n -= n;
		if (!data.n)
			return;
	}
	if (stdin_append(s, data) < 0) {
		agent_log("exec %u: stdin: out of memory; stdin closed", id);
		stdin_close(a, s);
		return;
	}
	a->stdin_queued += data.n;
	session_update(a, s);
}

/*
 * A streamed stdin frame goes on while the queue is under its bound; the
 * port waits meanwhile.  A child that took nothing for STDIN_STREAM_WAIT_NS
 * holds the port no longer: the data is queued as an unstreamed frame's
 * would be, under the bounds below.
 */
size_t session_stdin_room(struct agent *a, uint32_t id)
{
	struct session *s = session_find(a, id);

	if (s && !s->stdin_dead && !s->stdin_eof &&
	    stdin_pending(s) >= STDIN_STREAM_MAX &&
	    agent_clock_ns(CLOCK_MONOTONIC) - s->stdin_since < STDIN_STREAM_WAIT_NS)
		return 0;
	return SIZE_MAX;  /* taken, queued, or dropped as session_stdin does */
}

bool sessions_stdin_blocked(struct agent *a, uint64_t now)
{
	bool total = a->stdin_queued >= STDIN_TOTAL_MAX, blocked = false;
	struct session *s;

	if (!a->stdin_queued)
		return false;
	for (s = a->sessions; s; s = s->next) {
		if (!stdin_pending(s))
			continue;
		if (!total && stdin_pending(s) < STDIN_SESSION_MAX)
			continue;
		if (now - s->stdin_since < STDIN_GIVE_UP_NS) {
			blocked = true;
			continue;
		}
		agent_log("exec %u: child read no stdin for 5 s while the port "
			  "waited; its stdin is closed and %zu bytes dropped",
			  s->id, stdin_pending(s));
		stdin_close(a, s);
		session_update(a, s);
	}
	return blocked || a->stdin_queued >= STDIN_TOTAL_MAX;
}

/* ---- resize, signals, reaping ---- */

void session_resize(struct agent *a, uint32_t id, uint16_t rows, uint16_t cols)
{
	struct session *s = session_find(a, id);
	struct winsize ws = { .ws_row = rows, .ws_col = cols };

	if (s && s->tty && s->out.fd >= 0)
		ioctl(s->out.fd, TIOCSWINSZ, &ws);
}

/* A live child of ours got the pid of a reaped one: its group is not
 * that session's any more. */
static bool pid_reused(const struct agent *a, const struct session *s)
{
	const struct session *o;

	for (o = a->sessions; o; o = o->next)
		if (o != s && o->pid == s->pid && !o->reaped)
			return true;
	return false;
}

/*
 * To the process group (every child leads one), also after the child was
 * reaped: its background processes keep the session open (`sh -c "sleep
 * 300 &"`), and the pgid cannot be reused while any of them lives.  The
 * pid alone only before the reap (before setsid there is no group yet).
 */
static void session_kill(struct agent *a, struct session *s, int sig)
{
	if (s->pid <= 0 || (s->reaped && pid_reused(a, s)))
		return;
	if (kill(-s->pid, sig) < 0 && errno == ESRCH && !s->reaped)
		kill(s->pid, sig);
}

void session_signal(struct agent *a, uint32_t id, int32_t sig)
{
	struct session *s = session_find(a, id);

	if (s && sig >= 1 && sig <= 31)
		session_kill(a, s, sig);
}

void sessions_terminate(struct agent *a, int sig)
{
	struct session *s;

	for (s = a->sessions; s; s = s->next)
		session_kill(a, s, sig);
}

void session_reaped(struct agent *a, int pid, int status)
{
	struct session *s;

	for (s = a->sessions; s; s = s->next) {
		if (s->pid == pid && !s->reaped) {
			s->reaped = true;
			s->status = status;
			session_maybe_finish(a, s);
			return;
		}
	}
}

/* ---- preparing a spawn (in the agent, before clone) ---- */

static char *concat(struct arena *ar, const char *x, const char *y,
		    const char *z)
{
	size_t nx = strlen(x), ny = strlen(y), nz = strlen(z);
	char *p = arena_alloc(ar, nx + ny + nz + 1);

	if (!p)
		return NULL;
	memcpy(p, x, nx);
	memcpy(p + nx, y, ny);
	memcpy(p + nx + ny, z, nz + 1);
	return p;
}

static char *trimmed(struct arena *ar, const char *s, size_t n)
{
	char *p;

	while (n && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')) {
		s++;
		n--;
	}
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' ||
		     s[n - 1] == '\r'))
		n--;
	p = arena_alloc(ar, n + 1);
	if (!p)
		return NULL;
	memcpy(p, s, n);
	p[n] = 0;
	return p;
}

/* SPEC 5.5, the part that reads no file: the child looks the names up. */
static const char *parse_user_spec(struct arena *ar, const char *spec,
				   struct spawn *sp)
{
	char *user, *group = NULL, *colon;

	colon = strchr(spec, ':');
	user = trimmed(ar, spec, colon ? (size_t)(colon - spec) : strlen(spec));
	if (colon)
		group = trimmed(ar, colon + 1, strlen(colon + 1));
	if (!user || (colon && !group))
		return "out of memory";
	if (!*user)
		return "user spec has empty user";
	if (group && !*group)
		return "user spec has empty group";
	sp->user = user;
	sp->group = group;
	return NULL;
}

static bool has_key(char *const *list, size_t n, const char *key, size_t klen)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!strncmp(list[i], key, klen) && list[i][klen] == '=')
			return true;
	return false;
}

/* Order of two KEY=VALUE entries by key (the bytes before '='). */
static int key_cmp(const char *x, const char *y)
{
	for (; *x == *y && *x != '='; x++, y++)
		;
	return (*x == '=' ? 0 : (unsigned char)*x) -
	       (*y == '=' ? 0 : (unsigned char)*y);
}

/* Stable bottom-up merge sort of idx[0..n) by the keys of env[idx[i]]. */
static void sort_by_key(char **env, uint32_t *idx, uint32_t *tmp, size_t n)
{
	size_t w, lo;

	for (w = 1; w < n; w *= 2) {
		for (lo = 0; lo < n; lo += 2 * w) {
			size_t mid = lo + w < n ? lo + w : n;
			size_t hi = lo + 2 * w < n ? lo + 2 * w : n;
			size_t i = lo, j = mid, k = lo;

			while (i < mid && j < hi)
				tmp[k++] = key_cmp(env[idx[j]], env[idx[i]]) < 0 ?
					   idx[j++] : idx[i++];
			while (i < mid)
				tmp[k++] = idx[i++];
			while (j < hi)
				tmp[k++] = idx[j++];
		}
		memcpy(idx, tmp, n * sizeof(*idx));
	}
}

/*
 * A later entry replaces an earlier one with the same key in its place:
 * sorting by key keeps this n log n (a scan per entry let one request
 * with many entries stall the loop for minutes).  Returns the new count.
 */
static size_t env_merge(char **env, size_t n, uint32_t *idx, uint32_t *tmp)
{
	size_t i, j, k;

	for (i = 0; i < n; i++)
		idx[i] = (uint32_t)i;
	sort_by_key(env, idx, tmp, n);
	for (i = 0; i < n; i = j) {
		for (j = i + 1; j < n && !key_cmp(env[idx[i]], env[idx[j]]); j++)
			;
		env[idx[i]] = env[idx[j - 1]];
		for (k = i + 1; k < j; k++)
			env[idx[k]] = NULL;
	}
	for (i = j = 0; i < n; i++)
		if (env[i])
			env[j++] = env[i];
	return j;
}

static const char *check_env_size(const struct exec_request *rq)
{
	size_t bytes = 0, i;

	if (rq->nenv > ENV_MAX_ENTRIES)
		return "env has more than 65536 entries";
	for (i = 0; i < rq->nenv; i++)
		bytes += strlen(rq->env[i]) + 1;
	return bytes > ENV_MAX_BYTES ? "env larger than 2 MiB" : NULL;
}

/* SPEC 5.2 items 2 and 3: agent environment, PATH rule, overlay.  HOME
 * comes from the user, which the child looks up. */
static const char *build_env(struct agent *a, const struct exec_request *rq,
			     struct spawn *sp)
{
	struct arena *ar = &a->arena;
	size_t nagent = 0, n = 0, i;
	char *scripts, **env;
	uint32_t *idx, *tmp;
	const char *agent_path = getenv("PATH"), *err = check_env_size(rq);
	bool replaced = false;

	if (err)
		return err;
	while (environ[nagent])
		nagent++;
	/* + PATH, + HOME in the child, + NULL */
	env = arena_alloc(ar, (nagent + rq->nenv + 3) * sizeof(char *));
	idx = arena_alloc(ar, (nagent + rq->nenv + 1) * sizeof(uint32_t));
	tmp = arena_alloc(ar, (nagent + rq->nenv + 1) * sizeof(uint32_t));
	scripts = concat(ar, a->runtime_dir, "/scripts", "");
	if (!env || !idx || !tmp || !scripts)
		return "out of memory";
	for (i = 0; i < nagent; i++)
		if (strchr(environ[i], '='))
			env[n++] = environ[i];
	for (i = 0; i < rq->nenv; i++) {
		char *e = (char *)rq->env[i];

		if (!strchr(e, '='))
			continue;
		if (!replaced && !strncmp(e, "PATH=", 5)) {
			e = concat(ar, "PATH=", scripts, "");
			e = e ? concat(ar, e, ":", rq->env[i] + 5) : NULL;
			if (!e)
				return "out of memory";
			replaced = true;
		}
		env[n++] = e;
	}
	if (!replaced) {
		char *e = concat(ar, "PATH=", scripts, ":");

		e = e ? concat(ar, e, agent_path ? agent_path : DEFAULT_PATH, "") : NULL;
		if (!e)
			return "out of memory";
		env[n++] = e;
	}
	n = env_merge(env, n, idx, tmp);
	env[n] = NULL;
	sp->envp = env;
	sp->nenv = n;
	sp->home_slot = -1;
	sp->home_given = has_key((char *const *)rq->env, rq->nenv, "HOME", 4);
	sp->path = DEFAULT_PATH;
	for (i = 0; i < n; i++) {
		if (!strncmp(env[i], "PATH=", 5))
			sp->path = env[i] + 5;
		else if (!strncmp(env[i], "HOME=", 5))
			sp->home_slot = (long)i;
	}
	return NULL;
}

static const char *prepare(struct agent *a, const struct exec_request *rq,
			   struct spawn *sp)
{
	struct arena *ar = &a->arena;
	const char *spec = rq->user, *err;
	char *user_spec;
	size_t i;

	memset(sp, 0, sizeof(*sp));
	sp->tty = rq->tty;
	sp->cwd = rq->cwd;
	sp->argv = arena_alloc(ar, (rq->nargs + 2) * sizeof(char *));
	sp->limits = arena_alloc(ar, (rq->nrlimits + 1) * sizeof(*sp->limits));
	if (!sp->argv || !sp->limits)
		return "out of memory";
	sp->argv[0] = (char *)rq->cmd;
	for (i = 0; i < rq->nargs; i++)
		sp->argv[i + 1] = (char *)rq->args[i];
	sp->argv[rq->nargs + 1] = NULL;

	user_spec = spec ? trimmed(ar, spec, strlen(spec)) : NULL;
	if (!user_spec || !*user_spec) {
		spec = getenv("MSB_USER");
		user_spec = spec ? trimmed(ar, spec, strlen(spec)) : NULL;
	}
	if (user_spec && *user_spec && (err = parse_user_spec(ar, user_spec, sp)))
		return err;

	for (i = 0; i < rq->nrlimits; i++) {
		int res = rlimit_lookup(rq->rlimits[i].resource, false);

		if (res < 0)
			continue;  /* unknown names are ignored (SPEC 5.6) */
		sp->limits[sp->nlimits].res = res;
		sp->limits[sp->nlimits].lim.rlim_cur = rq->rlimits[i].soft;
		sp->limits[sp->nlimits].lim.rlim_max = rq->rlimits[i].hard;
		sp->nlimits++;
	}
	return build_env(a, rq, sp);
}

/*
 * ---- the child, between clone and exec ----
 *
 * It shares the agent's memory while the agent runs on: it reads only its
 * own copy of the spawn (child_mem), writes only its own stack, and calls
 * only raw system calls (rawsys.h) and functions that touch no global
 * state (string functions, fmt, userdb), never errno.
 */

static void __attribute__((noreturn)) child_fail(int errfd, int stage, int err)
{
	struct child_error ce = { stage, err };

	raw3(SYS_write, errfd, (long)&ce, sizeof(ce));
	for (;;)
		raw1(SYS_exit_group, 127);
}

/* execvp's search, over the PATH of the child's new environment; the
 * error to report (positive), as execve returned only on failure. */
static int child_exec(const struct spawn *sp)
{
	const char *cmd = sp->argv[0], *p = sp->path;
	size_t clen = strlen(cmd);
	char buf[4096];
	int err = ENOENT;
	bool eacces = false;

	if (!clen)
		return ENOENT;
	if (strchr(cmd, '/'))
		return (int)-raw3(SYS_execve, (long)cmd, (long)sp->argv, (long)sp->envp);
	for (;;) {
		const char *end = strchr(p, ':');
		size_t dlen = end ? (size_t)(end - p) : strlen(p);

		if (dlen + clen + 2 <= sizeof(buf)) {
			int e;

			memcpy(buf, dlen ? p : ".", dlen ? dlen : 1);
			if (!dlen)
				dlen = 1;
			buf[dlen] = '/';
			memcpy(buf + dlen + 1, cmd, clen + 1);
			e = (int)-raw3(SYS_execve, (long)buf, (long)sp->argv,
				       (long)sp->envp);
			if (e == EACCES)
				eacces = true;
			else if (e != ENOENT && e != ENOTDIR)
				err = e;
		}
		if (!end)
			break;
		p = end + 1;
	}
	return eacces ? EACCES : err;
}

/*
 * Default dispositions for every signal and an empty mask: libc refuses
 * to touch its internal signals (32-34), yet an ignored one of those is
 * inherited across exec like any other.
 */
static void child_reset_signals(void)
{
	uint64_t none = 0;
	int sig;

	for (sig = 1; sig <= 64; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			raw_signal(sig, SIG_DFL);
	raw4(SYS_rt_sigprocmask, SIG_SETMASK, (long)&none, 0, sizeof(uint64_t));
}

/* The ids to switch to, from the user spec and the guest's files. */
struct ids {
	uint32_t uid, gid;
	int ngroups;
	uint32_t groups[MAX_GROUPS];
	char home[5 + sizeof(((struct user_entry *)0)->home)];  /* HOME=... */
};

/*
 * SPEC 5.5.  In the child, not on the agent's loop: /etc/passwd on a hung
 * filesystem must stall this exec only.  A numeric user need not exist.
 */
static void child_lookup_user(const struct spawn *sp, struct ids *id, int errfd)
{
	struct user_entry pw;
	bool known;

	id->gid = (uint32_t)raw1(SYS_getgid, 0);
	id->ngroups = 0;
	id->home[0] = 0;
	if (userdb_parse_id(sp->user, &id->uid)) {
		known = userdb_user_by_uid(USERDB_PASSWD, id->uid, &pw) == 0;
	} else {
		known = userdb_user_by_name(USERDB_PASSWD, sp->user, &pw) == 0;
		if (!known)
			child_fail(errfd, ST_USER, 0);
		id->uid = pw.uid;
	}
	if (known) {
		id->gid = pw.gid;
		if (pw.home[0])
			fmt(id->home, sizeof(id->home), "HOME=%s", pw.home);
	}
	if (sp->group && !userdb_parse_id(sp->group, &id->gid) &&
	    userdb_group_by_name(USERDB_GROUP, sp->group, &id->gid) < 0)
		child_fail(errfd, ST_GROUP, 0);
	if (known)  /* else no name to look for: setgroups(0, NULL) */
		id->ngroups = userdb_group_list(USERDB_GROUP, pw.name, id->gid,
						id->groups, MAX_GROUPS);
}

/* The user's HOME unless the request set one (envp has room for it). */
static void child_set_home(struct spawn *sp, char *home)
{
	if (!home[0] || sp->home_given)
		return;
	if (sp->home_slot >= 0) {
		sp->envp[sp->home_slot] = home;
		return;
	}
	sp->envp[sp->nenv++] = home;
	sp->envp[sp->nenv] = NULL;
}

/* PID 1 runs at -1000 so the OOM killer never picks it; its children must
 * be killable.  Raising the value needs no privilege. */
static void child_reset_oom_score(void)
{
	int fd = (int)raw4(SYS_openat, AT_FDCWD, (long)"/proc/self/oom_score_adj",
			   O_WRONLY | O_CLOEXEC, 0);

	/* Without /proc there is nothing to undo either. */
	if (fd >= 0) {
		raw3(SYS_write, fd, (long)"0", 1);
		raw1(SYS_close, fd);
	}
}

/* fd becomes to, without close-on-exec (dup3 refuses fd == to). */
static long child_dup(int fd, int to)
{
	if (fd == to)
		return raw3(SYS_fcntl, fd, F_SETFD, 0);
	return raw3(SYS_dup3, fd, to, 0);
}

/* The spawn and fds the child works on, in its own mapping (child_mem). */
struct child_args {
	struct spawn sp;
	int fd[3];
	int errfd;
};

#ifdef AGENTD_FUZZ
/*
 * The fuzz build runs no program (fuzz/fuzz_agent.c): the first two
 * arguments go to stdout and stderr (bounded: 1 KiB each fits any pipe),
 * and the status is the length of cmd; an empty cmd fails as exec would.
 * The error pipe closes only when the child is gone: the agent frees the
 * child's stack at that EOF.
 */
static void fuzz_child_exec(const struct spawn *sp)
{
	size_t i;

	if (!sp->argv[0][0])
		return;
	for (i = 1; i < 3 && sp->argv[i]; i++)
		raw3(SYS_write, (long)i, (long)sp->argv[i], (long)strnlen(sp->argv[i], 1024));
	raw1(SYS_exit_group, (long)(strlen(sp->argv[0]) & 0xff));
}
#endif

static int child_run(void *arg)
{
	struct child_args *c = arg;
	struct spawn *sp = &c->sp;
	int errfd = c->errfd, i;
	struct ids id;
	long r;

	child_reset_signals();
	if ((r = raw1(SYS_setsid, 0)) < 0)
		child_fail(errfd, ST_SETSID, (int)-r);
	if (sp->tty && (r = raw3(SYS_ioctl, c->fd[0], TIOCSCTTY, 0)) < 0)
		child_fail(errfd, ST_CTTY, (int)-r);
	for (i = 0; i < 3; i++)
		if ((r = child_dup(c->fd[i], i)) < 0)
			child_fail(errfd, ST_DUP, (int)-r);
	/* Belt and braces: nothing inherited survives exec but 0-2. */
	raw3(SYS_close_range, 3, ~0u, 4 /* CLOSE_RANGE_CLOEXEC */);
	child_reset_oom_score();
	if (sp->user)
		child_lookup_user(sp, &id, errfd);
	if (sp->cwd && (r = raw1(SYS_chdir, (long)sp->cwd)) < 0)
		child_fail(errfd, ST_CWD, (int)-r);
	if (sp->user) {
		if ((r = raw2(SYS_setgroups, id.ngroups, (long)id.groups)) < 0)
			child_fail(errfd, ST_GROUPS, (int)-r);
		if ((r = raw1(SYS_setgid, id.gid)) < 0)
			child_fail(errfd, ST_GID, (int)-r);
		if ((r = raw1(SYS_setuid, id.uid)) < 0)
			child_fail(errfd, ST_UID, (int)-r);
		child_set_home(sp, id.home);
	}
	for (size_t k = 0; k < sp->nlimits; k++)
		if ((r = raw4(SYS_prlimit64, 0, sp->limits[k].res,
			      (long)&sp->limits[k].lim, 0)) < 0)
			child_fail(errfd, ST_RLIMIT, (int)-r);
#ifdef AGENTD_FUZZ
	fuzz_child_exec(sp);
#endif
	child_fail(errfd, ST_EXEC, child_exec(sp));
}

/* ---- the child's memory (in the agent) ---- */

#define CHILD_STACK (64u * 1024)
#define GUARD       4096u

static size_t strv_bytes(char *const *v, size_t *count)
{
	size_t n = 0, i;

	for (i = 0; v[i]; i++)
		n += strlen(v[i]) + 1;
	*count = i;
	return n;
}

static char *copy_str(char **cur, const char *x)
{
	size_t n;
	char *d = *cur;

	if (!x)
		return NULL;
	n = strlen(x) + 1;
	memcpy(d, x, n);
	*cur += n;
	return d;
}

/* v's strings at *cur, its pointers at slots (count + 1 + extra). */
static char **copy_strv(char **slots, char **cur, char *const *v)
{
	size_t i;

	for (i = 0; v[i]; i++)
		slots[i] = copy_str(cur, v[i]);
	slots[i] = NULL;
	return slots;
}

static size_t len0(const char *x)
{
	return x ? strlen(x) + 1 : 0;
}

/*
 * A guard page, the child's stack, then its copy of everything in sp: the
 * agent's arena is reused by the next frame while a stopped child may not
 * have exec'd yet.  NULL when out of memory.
 */
static struct child_args *child_mem_new(const struct spawn *sp, void **mem,
					size_t *len)
{
	size_t na, ne, strings = strv_bytes(sp->argv, &na) +
		strv_bytes(sp->envp, &ne) + len0(sp->path) + len0(sp->cwd) +
		len0(sp->user) + len0(sp->group);
	size_t lim = sp->nlimits * sizeof(*sp->limits);
	size_t ptrs = (na + 1 + ne + 2) * sizeof(char *);
	size_t n = GUARD + CHILD_STACK + sizeof(struct child_args) + lim + ptrs + strings;
	struct child_args *c;
	char *b, **slots, *cur;

	b = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (b == MAP_FAILED)
		return NULL;
	if (mprotect(b, GUARD, PROT_NONE) < 0) {
		munmap(b, n);
		return NULL;
	}
#ifdef CHILD_MEM_ASAN
	/* Sanitizer builds: a child that ended without returning left its
	 * frames' redzones poisoned in the shadow of this address, which
	 * mmap hands out again; the child's stack must start clean. */
	__asan_unpoison_memory_region(b, n);
#endif
	c = (struct child_args *)(b + GUARD + CHILD_STACK);
	c->sp = *sp;
	c->sp.limits = (void *)(c + 1);
	memcpy(c->sp.limits, sp->limits, lim);
	slots = (char **)((char *)c->sp.limits + lim);
	cur = (char *)(slots + na + 1 + ne + 2);
	c->sp.argv = copy_strv(slots, &cur, sp->argv);
	c->sp.envp = copy_strv(slots + na + 1, &cur, sp->envp);  /* + HOME */
	c->sp.path = copy_str(&cur, sp->path);
	c->sp.cwd = copy_str(&cur, sp->cwd);
	c->sp.user = copy_str(&cur, sp->user);
	c->sp.group = copy_str(&cur, sp->group);
	*mem = b;
	*len = n;
	return c;
}

/*
 * clone without CLONE_VFORK: the agent runs on at once, and with CLONE_VM
 * no page table is copied or write-protected (with fork the host-mode exec
 * round trip took 1.5-2.5 ms more, near vfork's with this).  The stack
 * ends where the args start (it grows down).
 */
static pid_t child_start(struct child_args *c)
{
	return clone(child_run, c, CLONE_VM | SIGCHLD, c);
}

static void child_mem_free(struct session *s)
{
	if (!s->child_mem)
		return;
	munmap(s->child_mem, s->child_mem_len);
	s->child_mem = NULL;
}

/* ---- spawning (in the agent) ---- */

/* The agent's ends and the child's ends of stdio. */
struct stdio_fds {
	int parent[3];  /* stdin write, stdout read, stderr read; PTY: master */
	int child[3];
};

/* Close each distinct fd once (a PTY slave serves as all three). */
static void close_fds(int *fds, int n)
{
	int i, j;

	for (i = 0; i < n; i++) {
		if (fds[i] < 0)
			continue;
		close(fds[i]);
		for (j = n - 1; j >= i; j--)
			if (fds[j] == fds[i])
				fds[j] = -1;
	}
}

static int open_pipes(struct stdio_fds *f)
{
	int p[2], i;

	for (i = 0; i < 3; i++) {
		if (pipe2(p, O_CLOEXEC) < 0)
			return -1;
		f->parent[i] = i ? p[0] : p[1];
		f->child[i] = i ? p[1] : p[0];
		if (fcntl(f->parent[i], F_SETFL, O_NONBLOCK) < 0)
			return -1;
	}
	return 0;
}

/*
 * The slave of master m.  TIOCGPTPEER (Linux 4.13) opens it without a
 * path a guest process could race; older kernels go through /dev/pts/N.
 * (musl's ptsname formats with snprintf, the whole printf engine.)
 */
static int open_pty_slave(int m)
{
	const int flags = O_RDWR | O_NOCTTY | O_CLOEXEC;
	char name[32];
	unsigned n;
	int fd = ioctl(m, TIOCGPTPEER, flags);

	if (fd >= 0 || (errno != EINVAL && errno != ENOTTY))
		return fd;
	if (ioctl(m, TIOCGPTN, &n) < 0)
		return -1;
	fmt(name, sizeof(name), "/dev/pts/%u", n);
	return open(name, flags);
}

static int open_pty(struct stdio_fds *f, uint16_t rows, uint16_t cols)
{
	struct winsize ws = { .ws_row = rows, .ws_col = cols };
	int unlock = 0;
	int m = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);

	if (m < 0)
		return -1;
	f->parent[0] = m;
	/* grantpt is a no-op on devpts; unlockpt is this ioctl. */
	if (ioctl(m, TIOCSPTLCK, &unlock) < 0 || ioctl(m, TIOCSWINSZ, &ws) < 0)
		return -1;
	f->child[0] = open_pty_slave(m);
	if (f->child[0] < 0)
		return -1;
	f->child[1] = f->child[2] = f->child[0];
	return 0;
}

static void exec_failed(struct agent *a, uint32_t id, const char *cmd,
			const char *what, const char *why)
{
	agent_log("exec %u \"%.64s\": %s%s%s", id, cmd, what, why ? ": " : "",
		  why ? why : "");
	send_exited(a, id, 0, false);
}

static void on_error_pipe(struct agent *a, struct watch *w, uint32_t events)
{
	struct session *s = session_of(w, offsetof(struct session, errp));
	struct child_error ce;
	struct msg m = { .type = MSG_EXEC_STARTED, .gen = PROTO_GEN_SEED };
	ssize_t n = read(w->fd, &ce, sizeof(ce));

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n == (ssize_t)sizeof(ce) && s->fail_stage < 0) {
		/* Reported at EOF: until then the child is on its stack. */
		s->fail_stage = ce.stage >= 0 && ce.stage <= ST_EXEC ? ce.stage : ST_EXEC;
		s->fail_err = ce.err;
		return;
	}
	close_watch(a, w);
	if (n == 0)  /* the child exec'd or exited: it is off child_mem */
		child_mem_free(s);
	if (s->fail_stage >= 0) {
		exec_failed(a, s->id, s->name, stage_names[s->fail_stage],
			    s->fail_err ? strerror(s->fail_err) : NULL);
		session_free(a, s);  /* the reaper discards its status */
		return;
	}
	/* EOF: the exec happened (close-on-exec closed the pipe). */
	s->started = true;
	m.u.exec_started.pid = s->pid;
	agent_send(a, s->id, &m);
	session_update(a, s);
	session_maybe_finish(a, s);
}

static struct session *session_new(struct agent *a, uint32_t id,
				   const struct exec_request *rq,
				   const struct stdio_fds *f, int errfd, pid_t pid)
{
	struct session *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->id = id;
	s->pid = pid;
	s->fail_stage = -1;
	s->tty = rq->tty;
	fmt(s->name, sizeof(s->name), "%s", rq->cmd);
	s->errp = (struct watch){ .fd = errfd, .handle = on_error_pipe };
	s->out = (struct watch){ .fd = rq->tty ? f->parent[0] : f->parent[1],
				 .handle = on_stdout };
	s->err = (struct watch){ .fd = rq->tty ? -1 : f->parent[2],
				 .handle = on_stderr };
	s->in = (struct watch){ .fd = rq->tty ? -1 : f->parent[0],
				.handle = on_stdin };
	s->next = a->sessions;
	a->sessions = s;
	a->nsessions++;
	return s;
}

void session_exec(struct agent *a, uint32_t id, const struct exec_request *rq)
{
	struct stdio_fds f = { { -1, -1, -1 }, { -1, -1, -1 } };
	int ep[2] = { -1, -1 };
	struct child_args *c;
	struct spawn sp;
	const char *err;
	struct session *s;
	void *mem = NULL;
	size_t mem_len = 0;
	pid_t pid;

	if (a->shutting_down) {
		exec_failed(a, id, rq->cmd, "shutting down", NULL);
		return;
	}
	err = prepare(a, rq, &sp);
	if (err) {
		exec_failed(a, id, rq->cmd, err, NULL);
		return;
	}
	if ((rq->tty ? open_pty(&f, rq->rows, rq->cols) : open_pipes(&f)) < 0 ||
	    pipe2(ep, O_CLOEXEC) < 0) {
		exec_failed(a, id, rq->cmd, rq->tty ? "pty" : "pipe",
			    strerror(errno));
		goto fail;
	}
	/*
	 * Not vfork: with vfork the agent stays suspended until the child
	 * execs, and a guest process stopping the child before that (or a
	 * hung chdir or execve) would freeze PID 1.
	 */
	c = child_mem_new(&sp, &mem, &mem_len);
	if (c) {
		c->fd[0] = f.child[0];
		c->fd[1] = f.child[1];
		c->fd[2] = f.child[2];
		c->errfd = ep[1];
	}
	pid = c ? child_start(c) : -1;
	if (pid < 0) {
		exec_failed(a, id, rq->cmd, "clone", strerror(errno));
		if (mem)
			munmap(mem, mem_len);
		goto fail;
	}
	close_fds(f.child, 3);
	close(ep[1]);
	ep[1] = -1;
	fcntl(ep[0], F_SETFL, O_NONBLOCK);
	s = session_new(a, id, rq, &f, ep[0], pid);
	if (s) {
		s->child_mem = mem;
		s->child_mem_len = mem_len;
	}
	if (!s || agent_watch(a, &s->errp, EPOLLIN) < 0) {
		/* The child runs unsupervised: stop it, the reaper collects it.
		 * Its memory stays mapped: it may be on it until it dies. */
		kill(pid, SIGKILL);
		exec_failed(a, id, rq->cmd, "session", strerror(errno));
		if (s)
			session_free(a, s);
		else
			goto fail;
	}
	return;
fail:
	close_fds(f.child, 3);
	close_fds(f.parent, 3);
	close_fds(ep, 2);
}
