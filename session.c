/* SPDX-License-Identifier: Apache-2.0 */
/*
 * session.c - exec sessions (SPEC 5): spawning in pipe or PTY mode,
 * stdin queues, output with backpressure, signals, resize, exit status.
 *
 * Life of a session: fork, then wait for the close-on-exec error pipe.
 * EOF on it means exec succeeded: send started and read output.  Data on
 * it means a step before exec failed: send exited -1 and forget the
 * session (the reaper discards the status).  A started session ends once
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
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "agent.h"
#include "fmt.h"
#include "userdb.h"

#define STDIN_SESSION_MAX  (8u * 1024 * 1024)
#define STDIN_TOTAL_MAX    (64u * 1024 * 1024)
#define STDIN_GIVE_UP_NS   (5ull * 1000000000)
#define STDIN_KEEP_CAP     (256u * 1024)
#define MAX_GROUPS         1024
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

extern char **environ;

/* What the child does between fork and exec, all prepared beforehand. */
struct spawn {
	char **argv;
	char **envp;
	const char *path;   /* PATH for a bare cmd */
	const char *cwd;
	bool switch_user;
	uid_t uid;
	gid_t gid;
	gid_t *groups;
	int ngroups;
	const char *home;   /* of the resolved user, or NULL */
	struct { int res; struct rlimit lim; } *limits;
	size_t nlimits;
	bool tty;
};

/* Written by the child on the error pipe when a step before exec fails. */
struct child_error {
	int stage;
	int err;
};

enum stage { ST_SETSID, ST_CTTY, ST_DUP, ST_CWD, ST_GROUPS, ST_GID, ST_UID,
	     ST_RLIMIT, ST_EXEC };

static const char *const stage_names[] = {
	"setsid", "set controlling terminal", "dup2", "chdir",
	"setgroups", "setgid", "setuid", "setrlimit", "exec",
};

struct stdin_queue {
	uint8_t *buf;
	size_t head, len, cap;
};

struct session {
	struct session *next;
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

/* One read of a child's output; false once the fd reached its end. */
static bool output_read(struct agent *a, struct session *s, struct watch *w,
			enum msg_type t)
{
	uint8_t buf[OUT_READ_CHUNK];
	struct msg m = { .type = t, .gen = PROTO_GEN_SEED };
	ssize_t n = read(w->fd, buf, sizeof(buf));

	if (n > 0) {
		m.u.data.data.p = buf;
		m.u.data.data.n = n;
		agent_send(a, s->id, &m);
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

static void stdin_flush(struct agent *a, struct session *s)
{
	int fd = s->tty ? (s->pty_eof ? -1 : s->out.fd) : s->in.fd;

	while (stdin_pending(s) && fd >= 0) {
		ssize_t n = write(fd, s->q.buf + s->q.head, stdin_pending(s));

		if (n > 0) {
			s->q.head += n;
			a->stdin_queued -= n;
			s->stdin_since = agent_clock_ns(CLOCK_MONOTONIC);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		/* EPIPE (stdin closed) or EIO (dead PTY): dropped (seed). */
		stdin_close(a, s);
		break;
	}
	if (!stdin_pending(s)) {
		s->q.head = s->q.len = 0;
		if (s->q.cap > STDIN_KEEP_CAP) {
			free(s->q.buf);
			memset(&s->q, 0, sizeof(s->q));
		}
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
	if (!stdin_pending(s))
		s->stdin_since = agent_clock_ns(CLOCK_MONOTONIC);
	if (stdin_append(s, data) < 0) {
		agent_log("exec %u: stdin: out of memory; stdin closed", id);
		stdin_close(a, s);
		return;
	}
	a->stdin_queued += data.n;
	stdin_flush(a, s);
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

/* To the process group (every child leads one); never after the reap. */
static void session_kill(struct session *s, int sig)
{
	if (s->reaped || s->pid <= 0)
		return;
	if (kill(-s->pid, sig) < 0 && errno == ESRCH)
		kill(s->pid, sig);
}

void session_signal(struct agent *a, uint32_t id, int32_t sig)
{
	struct session *s = session_find(a, id);

	if (s && sig >= 1 && sig <= 31)
		session_kill(s, sig);
}

void sessions_terminate(struct agent *a, int sig)
{
	struct session *s;

	for (s = a->sessions; s; s = s->next)
		session_kill(s, sig);
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

/* ---- preparing a spawn (in the agent, before fork) ---- */

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

/* SPEC 5.5.  Returns NULL or an error message. */
static const char *resolve_user(struct arena *ar, const char *spec,
				struct spawn *sp)
{
	char *user, *group = NULL, *colon;
	struct user_entry pw;
	bool known;
	uint32_t n;

	colon = strchr(spec, ':');
	user = trimmed(ar, spec, colon ? (size_t)(colon - spec) : strlen(spec));
	if (colon)
		group = trimmed(ar, colon + 1, strlen(colon + 1));
	if (!user || (colon && !group))
		return "out of memory";
	if (!*user)
		return "user spec has empty user";
	sp->switch_user = true;
	sp->gid = getgid();
	if (userdb_parse_id(user, &n)) {
		sp->uid = n;
		known = userdb_user_by_uid(n, &pw) == 0;
	} else {
		known = userdb_user_by_name(user, &pw) == 0;
		if (!known)
			return "guest user not found";
		sp->uid = pw.uid;
	}
	if (known) {
		sp->gid = pw.gid;
		if (pw.home[0])
			sp->home = concat(ar, pw.home, "", "");
	}
	if (group) {
		if (!*group)
			return "user spec has empty group";
		if (userdb_parse_id(group, &n))
			sp->gid = n;
		else if (userdb_group_by_name(group, &sp->gid) < 0)
			return "guest group not found";
	}
	sp->ngroups = 0;
	if (!known)
		return NULL;  /* no name: setgroups(0, NULL) */
	sp->groups = arena_alloc(ar, MAX_GROUPS * sizeof(gid_t));
	if (!sp->groups)
		return "out of memory";
	sp->ngroups = userdb_group_list(pw.name, sp->gid, sp->groups, MAX_GROUPS);
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

/* Set (replace or append) one KEY=VALUE entry in env[0..*n). */
static void env_put(char **env, size_t *n, char *entry)
{
	size_t klen = strchr(entry, '=') - entry, i;

	for (i = 0; i < *n; i++) {
		if (!strncmp(env[i], entry, klen) && env[i][klen] == '=') {
			env[i] = entry;
			return;
		}
	}
	env[(*n)++] = entry;
}

/* SPEC 5.2 items 2 and 3: agent environment, PATH rule, overlay, HOME. */
static const char *build_env(struct agent *a, const struct exec_request *rq,
			     struct spawn *sp)
{
	struct arena *ar = &a->arena;
	size_t nagent = 0, n = 0, i;
	char *scripts, *path_entry = NULL, **env;
	const char *agent_path = getenv("PATH");
	bool replaced = false;

	while (environ[nagent])
		nagent++;
	env = arena_alloc(ar, (nagent + rq->nenv + 3) * sizeof(char *));
	scripts = concat(ar, a->runtime_dir, "/scripts", "");
	if (!env || !scripts)
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
		env_put(env, &n, e);
	}
	if (!replaced) {
		path_entry = concat(ar, "PATH=", scripts, ":");
		path_entry = path_entry ? concat(ar, path_entry,
				agent_path ? agent_path : DEFAULT_PATH, "") : NULL;
		if (!path_entry)
			return "out of memory";
		env_put(env, &n, path_entry);
	}
	if (sp->home && !has_key((char *const *)rq->env, rq->nenv, "HOME", 4)) {
		char *home = concat(ar, "HOME=", sp->home, "");

		if (!home)
			return "out of memory";
		env_put(env, &n, home);
	}
	env[n] = NULL;
	sp->envp = env;
	sp->path = DEFAULT_PATH;
	for (i = 0; i < n; i++)
		if (!strncmp(env[i], "PATH=", 5))
			sp->path = env[i] + 5;
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
	if (user_spec && *user_spec && (err = resolve_user(ar, user_spec, sp)))
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

/* ---- the child, between fork and exec: async-signal-safe only ---- */

static void __attribute__((noreturn)) child_fail(int errfd, int stage, int err)
{
	struct child_error ce = { stage, err };

	if (write(errfd, &ce, sizeof(ce)) < 0)
		_exit(127);
	_exit(127);
}

/* execvp's search, over the PATH of the child's new environment. */
static int child_exec(const struct spawn *sp)
{
	const char *cmd = sp->argv[0], *p = sp->path;
	size_t clen = strlen(cmd);
	char buf[4096];
	int err = ENOENT;
	bool eacces = false;

	if (!clen)
		return ENOENT;
	if (strchr(cmd, '/')) {
		execve(cmd, sp->argv, sp->envp);
		return errno;
	}
	for (;;) {
		const char *end = strchr(p, ':');
		size_t dlen = end ? (size_t)(end - p) : strlen(p);

		if (dlen + clen + 2 <= sizeof(buf)) {
			memcpy(buf, dlen ? p : ".", dlen ? dlen : 1);
			if (!dlen)
				dlen = 1;
			buf[dlen] = '/';
			memcpy(buf + dlen + 1, cmd, clen + 1);
			execve(buf, sp->argv, sp->envp);
			if (errno == EACCES)
				eacces = true;
			else if (errno != ENOENT && errno != ENOTDIR)
				err = errno;
		}
		if (!end)
			break;
		p = end + 1;
	}
	return eacces ? EACCES : err;
}

/* The kernel's struct sigaction (x86-64, arm64 layout). */
struct kernel_sigaction {
	void (*handler)(int);
	unsigned long flags;
	void (*restorer)(void);
	uint64_t mask;
};

/*
 * Default dispositions for every signal and an empty mask, through raw
 * syscalls: libc refuses to touch its internal signals (32-34), yet an
 * ignored one of those is inherited across exec like any other.
 */
static void child_reset_signals(void)
{
	struct kernel_sigaction dfl = { .handler = SIG_DFL };
	uint64_t none = 0;
	int sig;

	for (sig = 1; sig <= 64; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			syscall(SYS_rt_sigaction, sig, &dfl, NULL, sizeof(uint64_t));
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof(uint64_t));
}

#ifdef AGENTD_FUZZ
/*
 * The fuzz build runs no program (fuzz/fuzz_agent.c): exec "succeeds" by
 * closing the error pipe, the first two arguments go to stdout and stderr
 * (bounded, so a vfork parent is never stuck on a full pipe), and the
 * status is the length of cmd.  An empty cmd fails as exec would.
 */
static void fuzz_child_exec(const struct spawn *sp, int errfd)
{
	size_t i;

	if (!sp->argv[0][0])
		return;
	close(errfd);
	for (i = 1; i < 3 && sp->argv[i]; i++)
		if (write(i, sp->argv[i], strnlen(sp->argv[i], 1024)) < 0)
			break;
	_exit(strlen(sp->argv[0]) & 0xff);
}
#endif

static void __attribute__((noreturn)) child_run(const struct spawn *sp,
		int fd0, int fd1, int fd2, int errfd)
{
	size_t i;

	child_reset_signals();
	if (setsid() < 0)
		child_fail(errfd, ST_SETSID, errno);
	if (sp->tty && ioctl(fd0, TIOCSCTTY, 0) < 0)
		child_fail(errfd, ST_CTTY, errno);
	if (dup2(fd0, 0) < 0 || dup2(fd1, 1) < 0 || dup2(fd2, 2) < 0)
		child_fail(errfd, ST_DUP, errno);
	/* Belt and braces: nothing inherited survives exec but 0-2. */
	syscall(SYS_close_range, 3, ~0u, 4 /* CLOSE_RANGE_CLOEXEC */);
	if (sp->cwd && chdir(sp->cwd) < 0)
		child_fail(errfd, ST_CWD, errno);
	/* Raw syscalls: libc's wrappers synchronise threads (none here). */
	if (sp->switch_user) {
		if (syscall(SYS_setgroups, sp->ngroups, sp->groups) < 0)
			child_fail(errfd, ST_GROUPS, errno);
		if (syscall(SYS_setgid, sp->gid) < 0)
			child_fail(errfd, ST_GID, errno);
		if (syscall(SYS_setuid, sp->uid) < 0)
			child_fail(errfd, ST_UID, errno);
	}
	for (i = 0; i < sp->nlimits; i++)
		if (syscall(SYS_prlimit64, 0, sp->limits[i].res,
			    &sp->limits[i].lim, NULL) < 0)
			child_fail(errfd, ST_RLIMIT, errno);
#ifdef AGENTD_FUZZ
	fuzz_child_exec(sp, errfd);
#endif
	child_fail(errfd, ST_EXEC, child_exec(sp));
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
	close_watch(a, w);
	if (n == (ssize_t)sizeof(ce)) {
		int stage = ce.stage >= 0 && ce.stage <= ST_EXEC ? ce.stage : ST_EXEC;

		exec_failed(a, s->id, s->name, stage_names[stage], strerror(ce.err));
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
	struct spawn sp;
	const char *err;
	struct session *s;
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
	 * vfork: the agent is suspended until the child execs or fails, and
	 * no page of it is copied or write-protected meanwhile (a quarter of
	 * an exec round trip in a TCG guest).  The child only makes system
	 * calls on data prepared above and never returns from child_run.
	 */
	pid = vfork();
	if (pid < 0) {
		exec_failed(a, id, rq->cmd, "fork", strerror(errno));
		goto fail;
	}
	if (pid == 0)
		child_run(&sp, f.child[0], f.child[1], f.child[2], ep[1]);
	close_fds(f.child, 3);
	close(ep[1]);
	ep[1] = -1;
	fcntl(ep[0], F_SETFL, O_NONBLOCK);
	s = session_new(a, id, rq, &f, ep[0], pid);
	if (!s || agent_watch(a, &s->errp, EPOLLIN) < 0) {
		/* The child runs unsupervised: stop it, the reaper collects it. */
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
