/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ctl.h - what agentctl's files share: the connection to the agent
 * (ctl_transport.c), guest entries (ctl_files.c), the command line state
 * and plumbing (agentctl.c), and the limits that bound its memory.
 */
#ifndef CTL_H
#define CTL_H

#include <getopt.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

/* An owned copy of an FsEntryInfo (decoded ones die with their frame). */
struct entry {
	char *path;
	char kind[8];
	uint64_t size;
	uint32_t mode;
	bool has_modified;
	int64_t modified;
};

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

/* ctl_transport.c: errors (guest text sanitized), small helpers, the port */
void sanitize(char *s);
const char *safe(const char *s, char *buf, size_t n);
void vreport(const char *fmt, va_list ap);
void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *xmalloc(size_t n);
char *xstrndup(const char *s, size_t n);
uint64_t now_ms(void);
int write_all(int fd, const void *p, size_t n);
int64_t parse_duration(const char *s);
const char *base_name(const char *p);
char *path_join(const char *a, const char *b);
char *last_component(const char *p);

void conn_init(struct conn *c, int fd, uint8_t gen);
int open_port(const char *path, int64_t timeout_ms);
void conn_wait_ready(struct conn *c, int64_t timeout_ms);
void conn_boot_g7(struct conn *c, int64_t timeout_ms);
size_t conn_pending(const struct conn *c);
uint32_t conn_new_id(struct conn *c);
void conn_send(struct conn *c, uint32_t id, const struct msg *m);
void conn_send_shutdown(struct conn *c);
int conn_poll(struct conn *c, struct pollfd *fds, int n, int timeout_ms);
void conn_flush(struct conn *c, int timeout_ms);
int conn_next(struct conn *c, uint32_t *id, struct msg *m);
int conn_idle_left(struct conn *c, uint64_t since);
void conn_wait_msg(struct conn *c, uint32_t want, struct msg *m);

/* agentctl.c: command line plumbing */
void usage_error(const char *usage, const char *fmt, ...) __attribute__((noreturn));
void ctl_connect(struct ctl *x);
int sub_getopt(int argc, char **argv, const char *shortopts,
	       const struct option *longopts, const char *usage);

/* ctl_files.c: guest file access and the file commands */
bool guest_stat(struct conn *c, const char *path, struct entry *e);
bool guest_is_dir(struct conn *c, const char *path);
int cmd_cp(struct ctl *x, int argc, char **argv);
int cmd_ls(struct ctl *x, int argc, char **argv);
int cmd_stat(struct ctl *x, int argc, char **argv);
int cmd_mkdir(struct ctl *x, int argc, char **argv);
int cmd_rm(struct ctl *x, int argc, char **argv);
int cmd_mv(struct ctl *x, int argc, char **argv);
int cmd_cat(struct ctl *x, int argc, char **argv);

/* ctl_exec.c */
int cmd_exec(struct ctl *x, int argc, char **argv);

#endif
