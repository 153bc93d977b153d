/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_agent.c - libFuzzer target for the whole agent, with state.
 *
 * The input is the byte stream a host writes to the port, delivered in
 * pieces whose sizes come from the input itself.  It goes through a
 * socketpair into the real loop (agentd.c built with -DAGENTD_FUZZ), so
 * the frame reader, its resync, every decoder, dispatch, sessions and
 * file operations run as in the guest.  After each piece the loop runs
 * until idle and the harness decodes everything the agent wrote.  After
 * the input the harness checks that
 *
 *   - every frame the agent wrote decodes (frame, envelope, payload);
 *   - the agent still reads the port and answers a Stat of "/";
 *   - its queues are within their bounds;
 *   - once fs requests, fs workers and sessions are torn down (workers
 *     let go, then killed; bounded waits), no child it started is left,
 *     not even a zombie, it holds exactly the fds it held before the
 *     input, and its heap did not grow past a bound;
 *   - no child (forked fs workers, the clone child of a spawn) hit a
 *     sanitizer error (they run most fs code and end with _exit).
 *
 * A violated property aborts, which libFuzzer reports as a crash.
 *
 * Confinement (the fuzzer runs as root and a fuzzed RemoveDir of "/" is
 * the first thing it tries): in a private mount namespace a small tmpfs
 * (the jail) holds /.msb, /etc, /dev/null, a devpts instance for PTYs,
 * and a bind mount of the artifact directory when it holds nothing but
 * crash files (run-fuzzers gives a dedicated one), so libFuzzer can still
 * save a crash that happens in the jail.  The process is chrooted into
 * the jail for each input and leaves it afterwards (it holds fds of the
 * real root and cwd), so libFuzzer writes its corpus outside.  After an
 * input that may have changed it the jail is emptied and its files put
 * back, so inputs are independent.  No program
 * runs: session.c's fuzz build exits in the child right before exec (see
 * fuzz_child_exec), after the real setsid, dup2, chdir, setuid, rlimits.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sanitizer/allocator_interface.h>

#include "agent.h"

#define STEPS_MAX        4096              /* loop turns per settle */
#define SESSION_WAIT_MS  100               /* children end on their own */
#define KILL_WAIT_MS     5000              /* after SIGKILL: must end */
#define PROBE_WAIT_MS    5000              /* a loaded machine is slow */
#define STDIN_BOUND      (64u * 1024 * 1024)  /* session.c STDIN_TOTAL_MAX */
#define HEAP_GROWTH_MAX  (2u * 1024 * 1024)   /* out queue kept cap + slack */
#define PROBE_ID_BASE    0xfffff000u

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

static struct agent agent;
static int host_fd = -1;          /* our end of the port */
static struct frame_reader rd;    /* the agent's output */
static struct arena rd_arena;
static uint32_t probe_id;         /* 0: no probe outstanding */
static bool probe_answered;

static char jail[64];             /* tmpfs mount point */
static int jail_fd = -1;          /* the tmpfs root */
static int real_root_fd = -1, real_cwd_fd = -1;
static int proc_fd_dir = -1;      /* /proc/self/fd, opened before the jail */
static int children_fd = -1;      /* /proc/self/task/PID/children, too */
static char children0[512];       /* its text before the input */
static bool jailed;
static bool trace;                /* FUZZ_AGENT_TRACE set */
static char artifact_dir[PATH_MAX];  /* "" = none given */
static struct stat artifact_st;
static dev_t devpts_dev;
/* stderr as it was before libFuzzer's -close_fd_mask=2 silenced the
 * agent's log lines */
static int err_fd = STDERR_FILENO;
static pid_t harness_pid;
static volatile unsigned *child_reports;  /* MAP_SHARED, inherited */

/* ------------------------------------------------------------------ */
/* Failing                                                              */

static void leave_jail(void);

static void __attribute__((noreturn)) violated(const char *what)
{
	leave_jail();
	if (child_reports && *child_reports)
		what = "a child of the agent hit a sanitizer error";
	dprintf(err_fd, "property violated: %s\n", what);
	abort();
}

/* Setup errors: the harness cannot confine the agent, so it must not run. */
static void __attribute__((noreturn)) setup_failed(const char *what)
{
	fprintf(stderr, "fuzz-agent: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* An ASan report in the jail: leave it so the crash file lands outside. */
void __asan_on_error(void);
void __asan_on_error(void)
{
	if (getpid() == harness_pid)
		leave_jail();
}

/*
 * Most fs code runs in forked children, which close every fd but their
 * own (so the report fd too) and end with _exit: a sanitizer error in
 * one would only leave a crash file.  Every report ends with a summary;
 * a child counts it in a page shared with the harness, which then fails
 * the input (replay without -close_fd_mask=2 to see the child's report).
 */
void __sanitizer_report_error_summary(const char *summary)
{
	int fd = getpid() == harness_pid ? err_fd : STDERR_FILENO;

	if (getpid() != harness_pid && child_reports)
		__atomic_add_fetch(child_reports, 1, __ATOMIC_SEQ_CST);
	dprintf(fd, "%s\n", summary);
}

/* ------------------------------------------------------------------ */
/* The jail                                                             */

static void enter_jail(void)
{
	if (fchdir(jail_fd) < 0 || chroot(".") < 0)
		setup_failed("chroot into the jail");
	jailed = true;
}

static void leave_jail(void)
{
	if (!jailed)
		return;
	if (fchdir(real_root_fd) < 0 || chroot(".") < 0 || fchdir(real_cwd_fd) < 0) {
		/* Cannot get out: nothing may run outside believing it is out. */
		fprintf(stderr, "fuzz-agent: cannot leave the jail: %s\n", strerror(errno));
		_exit(1);
	}
	jailed = false;
}

static void jail_path(char *buf, size_t n, const char *rel)
{
	if ((size_t)snprintf(buf, n, "%s/%s", jail, rel) >= n)
		setup_failed("jail path too long");
}

static void jail_mkdir(const char *rel, mode_t mode)
{
	char p[PATH_MAX];

	jail_path(p, sizeof(p), rel);
	if (mkdir(p, mode) < 0 && errno != EEXIST)
		setup_failed(p);
}

static void jail_file(const char *rel, const char *text)
{
	char p[PATH_MAX];
	int fd;

	jail_path(p, sizeof(p), rel);
	fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		setup_failed(p);
	close(fd);
}

/* mkdir -p of an absolute path inside the jail. */
static void jail_mkdirs(const char *abs)
{
	char rel[PATH_MAX], *s;

	snprintf(rel, sizeof(rel), "%s", abs + 1);
	for (s = rel; (s = strchr(s, '/')); *s++ = '/') {
		*s = 0;
		jail_mkdir(rel, 0755);
	}
	jail_mkdir(rel, 0755);
}

/* The files every input starts from (after a wipe, on the same tmpfs). */
static void jail_files(void)
{
	char p[PATH_MAX];

	jail_mkdir(".msb", 0755);
	jail_mkdir(".msb/scripts", 0755);
	jail_mkdir("etc", 0755);
	jail_mkdir("tmp", 01777);
	jail_mkdir("dev", 0755);
	jail_file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
		  "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n");
	jail_file("etc/group", "root:x:0:\nwheel:x:10:root,nobody\n"
		  "nogroup:x:65534:\n");
	jail_path(p, sizeof(p), "dev/null");
	if (mknod(p, S_IFCHR | 0666, makedev(1, 3)) < 0 && errno != EEXIST)
		setup_failed(p);
	jail_path(p, sizeof(p), "dev/ptmx");
	if (symlink("pts/ptmx", p) < 0 && errno != EEXIST)
		setup_failed(p);
}

/* A fresh tmpfs with its devpts and the artifact bind mount. */
static void jail_build(void)
{
	char p[PATH_MAX];
	struct stat st;

	if (mount("fuzz-agent", jail, "tmpfs", MS_NOSUID,
		  "size=64m,nr_inodes=16384,mode=0755") < 0)
		setup_failed("mount the jail's tmpfs");
	jail_mkdir("dev", 0755);
	jail_mkdir("dev/pts", 0755);
	jail_path(p, sizeof(p), "dev/pts");
	if (mount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC,
		  "newinstance,ptmxmode=0666,mode=0620") < 0 || stat(p, &st) < 0)
		setup_failed("mount devpts in the jail");
	devpts_dev = st.st_dev;
	if (artifact_dir[0]) {
		jail_mkdirs(artifact_dir);
		jail_path(p, sizeof(p), artifact_dir + 1);
		if (mount(artifact_dir, p, NULL, MS_BIND, NULL) < 0)
			setup_failed("bind the artifact directory into the jail");
	}
	jail_files();
	if (jail_fd >= 0)
		close(jail_fd);
	jail_fd = open(jail, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (jail_fd < 0)
		setup_failed("open the jail");
}

static int wipe_one(const char *path, const struct stat *st, int type, struct FTW *f)
{
	if (f->level == 0)
		return 0;
	if (type == FTW_DP || type == FTW_D || type == FTW_DNR)
		rmdir(path);  /* fails for the parents of mounts: fine */
	else
		unlink(path);
	return 0;
}

/* The mounts are where jail_build put them (the agent may rename dirs). */
static bool jail_intact(void)
{
	char p[PATH_MAX];
	struct stat st;

	jail_path(p, sizeof(p), "dev/pts");
	if (stat(p, &st) < 0 || st.st_dev != devpts_dev)
		return false;
	if (!artifact_dir[0])
		return true;
	jail_path(p, sizeof(p), artifact_dir + 1);
	return stat(p, &st) == 0 && st.st_dev == artifact_st.st_dev &&
	       st.st_ino == artifact_st.st_ino;
}

/*
 * Empty the jail's tmpfs (not crossing into devpts or the artifacts)
 * and put the starting files back; rebuild it when the tree is too deep
 * to walk or a mount moved.  Runs outside the jail, on absolute paths
 * under the jail's mount point; FTW_PHYS never follows a planted link.
 */
static void jail_reset(void)
{
	if (strncmp(jail, "/tmp/fuzz-agent.", 16))
		abort();
	if (nftw(jail, wipe_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) == 0 &&
	    jail_intact()) {
		jail_files();
		return;
	}
	if (umount2(jail, MNT_DETACH) < 0)
		setup_failed("unmount the jail");
	jail_build();
}

static void jail_remove(void)
{
	leave_jail();
	if (jail[0] && umount2(jail, MNT_DETACH) == 0)
		rmdir(jail);
}

/*
 * The agent in the jail can empty its artifact directory, so only a
 * directory of nothing but libFuzzer's artifacts is bound there (never
 * the default "./", which would hand the agent the cwd).
 */
static bool only_artifacts(const char *dir)
{
	static const char *const kinds[] = { "crash-", "leak-", "timeout-",
		"oom-", "slow-unit-", NULL };
	DIR *d = opendir(dir);
	struct dirent *e;
	bool ok = d != NULL;
	int i;

	while (ok && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		for (i = 0; kinds[i] && strncmp(e->d_name, kinds[i], strlen(kinds[i])); i++)
			;
		ok = kinds[i] != NULL;
	}
	if (d)
		closedir(d);
	return ok;
}

/* libFuzzer's -artifact_prefix / -exact_artifact_path: their directory. */
static void find_artifact_dir(int argc, char **argv)
{
	const char *v = NULL, *slash;
	char dir[PATH_MAX], *r;
	int i;

	for (i = 1; i < argc; i++) {
		if (!strncmp(argv[i], "-artifact_prefix=", 17))
			v = argv[i] + 17;
		else if (!strncmp(argv[i], "-exact_artifact_path=", 21))
			v = argv[i] + 21;
	}
	if (!v)
		return;
	slash = strrchr(v, '/');
	snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - v) : 1,
		 slash ? (slash == v ? "/" : v) : ".");
	r = realpath(dir, NULL);
	if (!r || !strcmp(r, "/") || stat(r, &artifact_st) < 0 || !only_artifacts(r)) {
		fprintf(stderr, "fuzz-agent: %s holds more than crash files, so it is not "
			"bound into the jail: a crash inside may lose its input\n", dir);
		free(r);
		return;
	}
	snprintf(artifact_dir, sizeof(artifact_dir), "%s", r);
	free(r);
}

static void jail_setup(void)
{
	char p[64];

	if (unshare(CLONE_NEWNS) < 0)
		setup_failed("unshare the mount namespace (needs root)");
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		setup_failed("make mounts private");
	snprintf(jail, sizeof(jail), "/tmp/fuzz-agent.XXXXXX");
	if (!mkdtemp(jail))
		setup_failed("mkdtemp");
	atexit(jail_remove);
	jail_build();
	real_root_fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	real_cwd_fd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	proc_fd_dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	snprintf(p, sizeof(p), "/proc/self/task/%d/children", (int)getpid());
	children_fd = open(p, O_RDONLY | O_CLOEXEC);
	if (real_root_fd < 0 || real_cwd_fd < 0 || proc_fd_dir < 0 || children_fd < 0)
		setup_failed("open / . /proc/self/fd /proc/self/task/PID/children");
}

/* ------------------------------------------------------------------ */
/* Measuring                                                            */

static int fd_count(void)
{
	char buf[4096];
	long n, off;
	int count = 0;

	if (lseek(proc_fd_dir, 0, SEEK_SET) < 0)
		violated("rewind /proc/self/fd");
	while ((n = syscall(SYS_getdents64, proc_fd_dir, buf, sizeof(buf))) > 0) {
		for (off = 0; off < n; ) {
			struct { uint64_t ino; int64_t off; unsigned short reclen;
				 unsigned char type; char name[]; } *d = (void *)(buf + off);

			if (d->name[0] != '.')
				count++;
			off += d->reclen;
		}
	}
	if (n < 0)
		violated("read /proc/self/fd");
	return count;
}

/* ------------------------------------------------------------------ */
/* The agent's output                                                   */

/* FUZZ_AGENT_TRACE=1: what the agent answered (replaying an input). */
static void trace_frame(uint32_t id, const struct msg *m)
{
	const struct fs_response *r = &m->u.fs_response;
	size_t i;

	dprintf(err_fd, "< %u %s", id, msg_type_name(m->type));
	switch (m->type) {
	case MSG_FS_RESPONSE:
		dprintf(err_fd, " ok=%d %s", r->ok, r->error ? r->error : "");
		if (r->data_kind == FS_DATA_STAT)
			dprintf(err_fd, " %s %s", r->stat.kind, r->stat.path);
		for (i = 0; r->data_kind == FS_DATA_LIST && i < r->nlist; i++)
			dprintf(err_fd, " %s", r->list[i].path);
		break;
	case MSG_EXEC_EXITED:
		dprintf(err_fd, " code=%d signal=%d", m->u.exec_exited.code,
			m->u.exec_exited.signal);
		break;
	case MSG_EXEC_STDOUT: case MSG_EXEC_STDERR: case MSG_FS_DATA:
		dprintf(err_fd, " \"%.*s\"", (int)(m->u.data.data.n > 65536 ? 65536 :
			m->u.data.data.n), (const char *)m->u.data.data.p);
		break;
	default:
		break;
	}
	dprintf(err_fd, "\n");
}

static void check_frame(const struct frame *f)
{
	struct envelope env;
	struct decode_error err;
	struct msg m;

	if (envelope_decode_arena(f->body, f->body_len, &env, &rd_arena, &err) < 0)
		violated("the agent wrote a frame whose envelope does not decode");
	if (env.type == MSG_UNKNOWN)
		violated("the agent wrote a frame of an unknown type");
	memset(&m, 0, sizeof(m));
	if (payload_decode(env.type, env.v, env.payload, &m, &rd_arena, &err) < 0) {
		dprintf(err_fd, "%s: %s\n", msg_type_name(env.type), err.msg);
		violated("the agent wrote a payload that does not decode");
	}
	if (trace)
		trace_frame(f->id, &m);
	if (probe_id && f->id == probe_id && env.type == MSG_FS_RESPONSE) {
		if (!m.u.fs_response.ok || m.u.fs_response.data_kind != FS_DATA_STAT ||
		    strcmp(m.u.fs_response.stat.kind, "dir"))
			violated("Stat of / did not answer a directory");
		probe_answered = true;
	}
	arena_reset(&rd_arena);
}

/* Read and check everything the agent wrote so far. */
static void drain(void)
{
	struct frame f;
	enum frame_status st;

	for (;;) {
		size_t room;
		uint8_t *p = frame_reader_space(&rd, &room);
		ssize_t n = room ? read(host_fd, p, room) : 0;

		if (n <= 0)
			break;
		frame_reader_commit(&rd, n);
		while ((st = frame_next(&rd, &f)) != FRAME_NEED_MORE) {
			if (st != FRAME_OK)
				violated("the agent wrote a malformed frame");
			check_frame(&f);
		}
	}
}

/* Turn the loop until nothing happens (or STEPS_MAX turns of streaming). */
static void settle(int timeout_ms)
{
	int i;

	for (i = 0; i < STEPS_MAX; i++) {
		int n = agent_fuzz_step(&agent, timeout_ms);

		drain();
		if (!n)
			return;
	}
}

static uint64_t now_ms(void)
{
	return agent_clock_ns(CLOCK_MONOTONIC) / 1000000;
}

/*
 * Turn the loop until done() holds or ms passed; true when it holds.
 * One turn at a time: settle() would end every call with an idle wait.
 */
static bool step_until(bool (*done)(void), unsigned ms)
{
	uint64_t end = now_ms() + ms;

	settle(0);
	while (!done() && now_ms() < end) {
		agent_fuzz_step(&agent, 10);
		drain();
	}
	return done();
}

static bool sessions_ended(void)
{
	return !agent.sessions;
}

/* Wait up to ms for every session to end; true when they did. */
static bool sessions_end(unsigned ms)
{
	return step_until(sessions_ended, ms);
}

/* Write all of p to the port, letting the agent read as it goes. */
static void send_bytes(const uint8_t *p, size_t n)
{
	int stuck = 0;

	while (n) {
		ssize_t w = write(host_fd, p, n);

		if (w > 0) {
			p += w;
			n -= w;
			stuck = 0;
		} else if (w < 0 && errno != EAGAIN) {
			violated("write to the port");
		}
		settle(0);
		if (w <= 0 && ++stuck > 100) {
			/* The agent stopped reading; only allowed while it shuts down. */
			if (!agent.shutting_down)
				violated("the agent stopped reading the port");
			return;
		}
	}
}

/* ------------------------------------------------------------------ */
/* Checks after an input                                                */

static void check_bounds(void)
{
	if (agent.out.len - agent.out_head > OUT_HARD_LIMIT + FRAME_WIRE_MAX)
		violated("output queue over its hard limit");
	if (agent.stdin_queued > STDIN_BOUND + FRAME_WIRE_MAX)
		violated("stdin queues over their limit");
	if (agent.in.len > agent.in.cap || agent.in.start > agent.in.len)
		violated("frame reader out of bounds");
}

static bool probe_done(void)
{
	return probe_answered;
}

/* A fresh stream (as after a reconnect), then a Stat of "/" must be
 * answered with a directory. */
static void check_answers(void)
{
	struct msg m = { .type = MSG_FS_REQUEST, .gen = PROTO_GEN_SEED };
	uint8_t buf[128];
	struct cbor_out o = { buf, 0, sizeof(buf), false };
	int avail = 0;

	if (agent.shutting_down)
		return;  /* a shutting-down agent reads nothing more */
	if (ioctl(agent.port_fd, FIONREAD, &avail) < 0 || avail > 0 ||
	    agent.reading_paused)
		violated("the agent left input unread on the port while idle");
	agent.in.start = agent.in.len = 0;
	for (probe_id = PROBE_ID_BASE; session_id_live(&agent, probe_id) ||
	     fs_id_live(&agent, probe_id); probe_id++)
		;
	m.u.fs_request.op = FS_STAT;
	m.u.fs_request.path = "/";
	if (frame_encode_msg(&o, probe_id, PROTO_GEN_SEED, &m) < 0)
		violated("encode the probe");
	probe_answered = false;
	send_bytes(buf, o.len);
	if (!step_until(probe_done, PROBE_WAIT_MS))
		violated("the agent did not answer a Stat of /");
	probe_id = 0;
}

/* ------------------------------------------------------------------ */
/* Ending everything an input started                                  */

static bool fs_ended(void)
{
	return !agent.fs_jobs && !agent.fs_workers && !agent.hb_pid;
}

/* Wait up to ms for every fs child (and the heartbeat child) to be
 * reaped; true when they were. */
static bool fs_end(unsigned ms)
{
	return step_until(fs_ended, ms);
}

/* Our children (zombies too), pids separated by spaces: libFuzzer keeps
 * one of its own (llvm-symbolizer), so compare with the list from before
 * the input. */
static void children_read(char *buf, size_t n)
{
	ssize_t r = pread(children_fd, buf, n - 1, 0);

	if (r < 0)
		violated("read /proc/self/task/PID/children");
	buf[r] = 0;
}

static bool children_back(void)
{
	char now[sizeof(children0)];

	children_read(now, sizeof(now));
	return !strcmp(now, children0);
}

/* Which children are left, and in what state (outside the jail). */
static void print_children(void)
{
	char p[64], buf[512];
	int pid = 0, fd;
	ssize_t n;
	FILE *f;

	snprintf(p, sizeof(p), "/proc/self/task/%d/children", (int)getpid());
	f = fopen(p, "re");
	while (f && fscanf(f, "%d", &pid) == 1) {
		snprintf(p, sizeof(p), "/proc/%d/stat", pid);
		fd = open(p, O_RDONLY | O_CLOEXEC);
		n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
		if (fd >= 0)
			close(fd);
		dprintf(err_fd, "child left: %.*s\n", n > 0 ? (int)n : 0, buf);
	}
	if (f)
		fclose(f);
}

/*
 * End all the input started: fs requests are given up and the pooled
 * workers let go (they end on their own: the agent closed their
 * sockets, a write child removes its temporary file), then killed;
 * sessions are killed; every child is reaped, so the next input starts
 * with the same fds and no process of this one.
 */
static void teardown(void)
{
	/* Streams first: a Read of /dev/pts/N would keep a PTY session open. */
	fs_fuzz_reset(&agent, false);
	if (!fs_end(SESSION_WAIT_MS)) {
		fs_fuzz_reset(&agent, true);
		if (!fs_end(KILL_WAIT_MS))
			violated("an fs child outlived SIGKILL");
	}
	sessions_terminate(&agent, SIGKILL);
	if (!sessions_end(KILL_WAIT_MS))
		violated("a session outlived SIGKILL of its child");
	agent_fuzz_reset(&agent);
	settle(0);
	rd.start = rd.len = 0;
	if (agent.fs_jobs || agent.fs_workers || agent.fs_lane || agent.fs_nqueued ||
	    agent.fs_nwrites || agent.fs_nreads || agent.fs_nstuck ||
	    agent.fs_wq_total || agent.stdin_queued || agent.hb_pid ||
	    agent.sessions || agent.nsessions)
		violated("state left after the reset");
	if (!step_until(children_back, KILL_WAIT_MS)) {
		leave_jail();
		dprintf(err_fd, "children before: %s\n", children0);
		print_children();
		violated("a child of the agent outlived the reset");
	}
	if (*child_reports)
		violated("a child of the agent hit a sanitizer error");
}

/* ------------------------------------------------------------------ */
/* Whether an input can change the jail                                */

static bool fs_op_mutates(enum fs_op op)
{
	return op == FS_WRITE || op == FS_MKDIR || op == FS_REMOVE ||
	       op == FS_REMOVE_DIR || op == FS_COPY || op == FS_RENAME;
}

/*
 * Decode the input as the agent will (the same reader and decoders): a
 * jail is only emptied after an input with a request that may change it,
 * or one the reader's resync could see differently in pieces.  Most
 * inputs change nothing, and the wipe is the dearest part of a run.
 */
static bool input_mutates(const uint8_t *data, size_t n)
{
	static struct frame_reader r;
	struct envelope env;
	struct decode_error err;
	enum frame_status st;
	struct frame f;
	struct msg m;
	bool dirty = false;

	if (!r.buf && frame_reader_init(&r) < 0)
		violated("out of memory");
	r.start = r.len = 0;
	frame_reader_feed(&r, data, n);
	while (!dirty && (st = frame_next(&r, &f)) != FRAME_NEED_MORE) {
		if (st == FRAME_TOO_LARGE)
			dirty = true;
		if (st != FRAME_OK ||
		    envelope_decode_arena(f.body, f.body_len, &env, &rd_arena, &err) < 0 ||
		    env.type != MSG_FS_REQUEST)
			continue;
		memset(&m, 0, sizeof(m));
		if (payload_decode(MSG_FS_REQUEST, PROTO_GEN_SEED, env.payload, &m,
				   &rd_arena, &err) == 0)
			dirty = fs_op_mutates(m.u.fs_request.op);
		arena_reset(&rd_arena);
	}
	arena_reset(&rd_arena);
	return dirty;
}

/* ------------------------------------------------------------------ */
/* libFuzzer                                                            */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int sv[2];

	err_fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
	if (err_fd < 0)
		err_fd = STDERR_FILENO;
	trace = getenv("FUZZ_AGENT_TRACE") != NULL;
	harness_pid = getpid();
	child_reports = mmap(NULL, sizeof(*child_reports), PROT_READ | PROT_WRITE,
			     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (child_reports == MAP_FAILED)
		setup_failed("mmap");
	find_artifact_dir(*argc, *argv);
	jail_setup();
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
		setup_failed("socketpair");
	host_fd = sv[1];
	if (frame_reader_init(&rd) < 0)
		setup_failed("frame reader");
	arena_init(&rd_arena, 1u << 24);
	agent.heartbeat_interval = 5;
	if (agent_fuzz_setup(&agent, sv[0]) < 0)
		setup_failed("agent setup");
	/* Once, so what the agent creates on first use (the fs timer) is
	 * there before the first input's fds are counted. */
	children_read(children0, sizeof(children0));
	enter_jail();
	check_answers();
	teardown();
	leave_jail();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	uint32_t seed = n ? data[0] * 2654435761u : 1;
	size_t pos = 0, step, heap0;
	int fds0 = fd_count();
	bool dirty = input_mutates(data, n);

	heap0 = __sanitizer_get_current_allocated_bytes();
	children_read(children0, sizeof(children0));
	enter_jail();
	while (pos < n && !agent.shutting_down) {
		seed = seed * 1103515245u + 12345u;
		step = 1 + (seed >> 16) % (seed & 0x100 ? 7 : 600);
		if (step > n - pos)
			step = n - pos;
		send_bytes(data + pos, step);
		pos += step;
	}
	settle(0);
	sessions_end(SESSION_WAIT_MS);
	check_bounds();
	if (dirty)
		heartbeat_write(&agent);  /* over whatever the input planted */
	check_answers();

	teardown();
	leave_jail();
	if (dirty)
		jail_reset();
	if (fd_count() != fds0)
		violated("the agent holds more fds than before the input");
	if (__sanitizer_get_current_allocated_bytes() > heap0 + HEAP_GROWTH_MAX)
		violated("the heap grew by more than 2 MiB over one input");
	return 0;
}
