/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ctl_exec.c - agentctl exec: the remote command, its output, stdin, the local
 * terminal in raw mode and the signals forwarded to the remote group.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <termios.h>
#include <unistd.h>

#include "ctl.h"

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

int cmd_exec(struct ctl *x, int argc, char **argv)
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
