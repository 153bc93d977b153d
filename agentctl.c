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
 * This file holds the command line, `ready` and `shutdown`; the port is
 * ctl_transport.c, exec is ctl_exec.c, the file commands are ctl_files.c
 * (ctl.h is what they share).
 *
 * Exit status: the remote status for exec (128+N when the remote process
 * was killed by signal N, 124 on --timeout, 126/127 when the command
 * could not be started); 0/1 for the other commands (1 = the guest
 * refused the operation); 125 for usage, local and transport errors.
 */
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

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
"                        0 = wait forever; an in-guest cp or rm -r is\n"
"                        answered only when done)\n"
"      --g7              boot a generation 7 agent (microsandbox's own) on this\n"
"                        connection: bootstrap, init ack, ready; then exec,\n"
"                        ready and shutdown work as usual\n"
"  -h, --help            this help; COMMAND --help for a command's help\n"
"      --version         print the version and the protocol generations\n"
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


void usage_error(const char *usage, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport(fmt, ap);
	va_end(ap);
	fprintf(stderr, "%.*s", (int)strcspn(usage, "\n") + 1, usage);
	exit(EXIT_TOOL);
}

void ctl_connect(struct ctl *x)
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
int sub_getopt(int argc, char **argv, const char *shortopts,
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
		{ "version", no_argument, NULL, 'V' },
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
		case 'V':
			printf("agentctl %s (protocol generations %d and %d)\n",
			       AGENTD_VERSION, PROTO_GEN_SEED, PROTO_GEN_CURRENT);
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
