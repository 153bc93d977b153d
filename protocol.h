/* SPDX-License-Identifier: Apache-2.0 */
/*
 * protocol.h - frames, the CBOR subset and the typed messages of the
 * microsandbox guest-agent protocol (SPEC.md sections 1-4 and 12).
 *
 * Ownership: decoded messages never own memory.  Byte strings point into
 * the frame body when the wire form was a definite byte string; everything
 * else (text, arrays, concatenated indefinite strings) lives in a caller
 * owned arena that is reset after the frame has been handled.  Nothing is
 * ever allocated from a length read off the wire before that length has
 * been checked against the bytes that remain.
 */
#ifndef AGENTD_PROTOCOL_H
#define AGENTD_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_GEN_SEED     1
#define PROTO_GEN_CURRENT  7
#define FRAME_LEN_MAX      4194304u  /* largest value of the len field */
#define FRAME_PREFIX       4u        /* the len field itself */
#define FRAME_HEADER       9u        /* len + id + flags */
#define FRAME_WIRE_MAX     (FRAME_PREFIX + FRAME_LEN_MAX)
#define FS_CHUNK_MAX       3145728u
#define CBOR_DEPTH_MAX     16

enum frame_flag {
	FLAG_TERMINAL      = 0x01,
	FLAG_SESSION_START = 0x02,
	FLAG_SHUTDOWN      = 0x04,
};

/* A byte or text range; text is valid UTF-8 and is NOT NUL-terminated. */
struct slice {
	const uint8_t *p;
	size_t n;
};

/* ------------------------------------------------------------------ */
/* Arena: bounded, per-frame scratch memory for decoded values.       */

struct arena_block;
struct arena {
	struct arena_block *blocks;
	size_t used;   /* bytes handed out since the last reset */
	size_t limit;  /* decoding fails with "too large" past this */
};

void arena_init(struct arena *a, size_t limit);
void *arena_alloc(struct arena *a, size_t n);   /* NULL when over limit */
void arena_reset(struct arena *a);              /* frees every block */

/* ------------------------------------------------------------------ */
/* CBOR encoder.  With buf == NULL it only counts (len grows, nothing  */
/* is written), which is how frame encoders size the payload first.    */

struct cbor_out {
	uint8_t *buf;
	size_t len;
	size_t cap;
	bool overflow;  /* set once a write did not fit; len keeps counting */
};

void cbor_put_uint(struct cbor_out *o, uint64_t v);
void cbor_put_int(struct cbor_out *o, int64_t v);
void cbor_put_bytes(struct cbor_out *o, const void *p, size_t n);
void cbor_put_text(struct cbor_out *o, const char *s, size_t n);
void cbor_put_str(struct cbor_out *o, const char *s); /* NUL-terminated */
void cbor_put_array(struct cbor_out *o, uint64_t n);
void cbor_put_map(struct cbor_out *o, uint64_t n);
void cbor_put_bool(struct cbor_out *o, bool b);
void cbor_put_null(struct cbor_out *o);
void cbor_put_raw(struct cbor_out *o, const void *p, size_t n);

/* ------------------------------------------------------------------ */
/* CBOR decoder: a cursor over a byte range.                           */

struct decode_error {
	char msg[192];  /* e.g. "exec.request: field \"cmd\": expected text" */
};

struct cbor_in {
	const uint8_t *p;
	const uint8_t *end;
	int depth;
	struct arena *arena;
	struct decode_error *err;
};

/* Skip one well-formed item of any type (tags, floats, indefinite
 * lengths included); -1 with err set when malformed or too deep. */
int cbor_skip(struct cbor_in *in);

/* ------------------------------------------------------------------ */
/* Frames.                                                             */

struct frame {
	uint32_t id;
	uint8_t flags;
	const uint8_t *body;  /* the envelope bytes */
	size_t body_len;
};

enum frame_status {
	FRAME_NEED_MORE = 0,
	FRAME_OK,
	FRAME_TOO_LARGE,  /* len > FRAME_LEN_MAX: buffered input discarded */
	FRAME_TOO_SHORT,  /* len < 5: exactly 4 + len bytes skipped */
};

/*
 * Incremental stream decoder.  The buffer is bounded (one maximal frame
 * plus one read chunk, SPEC 1.5); callers read straight into the space
 * frame_reader_space() offers, then commit what they read.
 */
struct frame_reader {
	uint8_t *buf;
	size_t start;  /* first unconsumed byte */
	size_t len;    /* end of buffered bytes */
	size_t cap;
	uint32_t last_bad_len;  /* len field of the last rejected frame */
};

#define FRAME_READ_CHUNK 65536u

int frame_reader_init(struct frame_reader *r);
void frame_reader_free(struct frame_reader *r);
/* Space for the next read; compacts as needed. 0 room = apply backpressure. */
uint8_t *frame_reader_space(struct frame_reader *r, size_t *room);
void frame_reader_commit(struct frame_reader *r, size_t n);
/* Copy in up to n bytes (tests, fuzzers); returns bytes accepted. */
size_t frame_reader_feed(struct frame_reader *r, const void *p, size_t n);
/* Next frame; its body stays valid until the next space/commit/feed. */
enum frame_status frame_next(struct frame_reader *r, struct frame *f);

/* ------------------------------------------------------------------ */
/* Typed messages.                                                      */

enum msg_type {
	MSG_UNKNOWN = 0,
	/* seed generation (SPEC 4.1) */
	MSG_READY,
	MSG_SHUTDOWN,
	MSG_EXEC_REQUEST,
	MSG_EXEC_STARTED,
	MSG_EXEC_STDIN,
	MSG_EXEC_STDOUT,
	MSG_EXEC_STDERR,
	MSG_EXEC_EXITED,
	MSG_EXEC_RESIZE,
	MSG_EXEC_SIGNAL,
	MSG_FS_REQUEST,
	MSG_FS_RESPONSE,
	MSG_FS_DATA,
	/* generation 7 additions (SPEC 12.2) */
	MSG_BOOTSTRAP,
	MSG_INIT_RESOLVED,
	MSG_INIT_ACK,
	MSG_RELAY_CLIENT_DISCONNECTED,
	MSG_CLOCK_SYNC,
	MSG_PING,
	MSG_PONG,
	MSG_TOUCH,
	MSG_TOUCHED,
	MSG_ERROR,
	MSG_EXEC_STDIN_ERROR,
	MSG_EXEC_FAILED,
	MSG_TCP_CONNECT,
	MSG_TCP_CONNECTED,
	MSG_TCP_DATA,
	MSG_TCP_EOF,
	MSG_TCP_CLOSE,
	MSG_TCP_CLOSED,
	MSG_TCP_FAILED,
	MSG_TYPE_COUNT
};

const char *msg_type_name(enum msg_type t);         /* "core.exec.request" */
enum msg_type msg_type_lookup(const uint8_t *s, size_t n);  /* MSG_UNKNOWN */
uint8_t msg_flags(enum msg_type t);                  /* flags per 4.1/12.2 */

struct ready {
	uint64_t boot_time_ns, init_time_ns, ready_time_ns;
	const char *agent_version;  /* g7; NULL or "" = omitted */
};

struct exec_rlimit {
	const char *resource;
	uint64_t soft, hard;
};

struct exec_request {
	const char *cmd;
	const char **args;  size_t nargs;
	const char **env;   size_t nenv;
	const char *cwd;    /* NULL = null */
	const char *user;   /* NULL = null */
	bool tty;
	uint16_t rows, cols;
	struct exec_rlimit *rlimits; size_t nrlimits;
};

struct exec_started { uint32_t pid; };

/* exec.stdin / stdout / stderr, fs.data, tcp.data: {"data": bstr} */
struct data_msg { struct slice data; };

struct exec_exited {
	int32_t code;
	/* agentd extension: "signal" is written after "code" only when the
	 * child was killed by a signal (code is then -1). */
	bool has_signal;
	int32_t signal;
};

struct exec_resize { uint16_t rows, cols; };
struct exec_signal { int32_t signal; };

enum fs_op {
	/* seed generation */
	FS_STAT, FS_LIST, FS_READ, FS_WRITE, FS_MKDIR, FS_REMOVE,
	FS_REMOVE_DIR, FS_COPY, FS_RENAME,
	/* generation 7 (12.5); FS_READ/FS_WRITE/... are reused with handles */
	FS_REALPATH, FS_SETSTAT, FS_READLINK, FS_SYMLINK, FS_OPEN_FILE,
	FS_OPEN_DIR, FS_CLOSE_HANDLE, FS_READ_DIR, FS_FSTAT, FS_FSETSTAT,
};

struct fs_set_attrs {  /* g7; has_* false = null */
	bool has_mode, has_uid, has_gid, has_size, has_atime, has_mtime;
	uint32_t mode, uid, gid;
	uint64_t size;
	int64_t atime, mtime;
};

struct fs_open_options {  /* g7 */
	bool read, write, append, create, truncate, create_new;
	bool has_mode;
	uint32_t mode;
};

/* One flat request; which fields are meaningful depends on op and gen. */
struct fs_request {
	enum fs_op op;
	const char *path;   /* Stat List Read Write Mkdir Remove RemoveDir ... */
	const char *src;    /* Copy Rename */
	const char *dst;
	bool has_mode;      /* Write (seed), Mkdir (g7) */
	uint32_t mode;
	/* generation 7 only */
	bool follow_symlink;
	bool recursive;
	const char *target, *link_path;     /* Symlink */
	uint64_t handle, offset;
	bool has_len;  uint64_t len;
	bool has_limit; uint32_t limit;
	struct fs_set_attrs attrs;
	struct fs_open_options options;
};

struct fs_entry {
	const char *path;
	const char *kind;  /* "file" "dir" "symlink" "other" */
	uint64_t size;
	uint32_t mode;
	bool has_modified; int64_t modified;
	/* generation 7 only */
	uint32_t uid, gid;
	bool has_atime; int64_t atime;
	bool has_mtime; int64_t mtime;
};

enum fs_data_kind { FS_DATA_NONE, FS_DATA_STAT, FS_DATA_LIST, FS_DATA_HANDLE, FS_DATA_PATH };

struct fs_response {
	bool ok;
	const char *error;   /* NULL = null */
	enum fs_data_kind data_kind;
	struct fs_entry stat;
	struct fs_entry *list; size_t nlist;
	uint64_t handle;     /* g7 */
	const char *path;    /* g7 */
};

/* ---- generation 7 payloads (SPEC 12.4-12.10) ---- */
/* G7-STRUCTS: bootstrap, init_resolved, clock_sync, touched, core_error,
 * exec_stdin_error, exec_failed, relay_client_disconnected, tcp_connect,
 * tcp_failed go here (the protocol issue fills them in). */

struct msg {
	enum msg_type type;
	uint8_t gen;  /* schema generation: 1 = seed, 7 = current */
	union {
		struct ready ready;
		struct exec_request exec_request;
		struct exec_started exec_started;
		struct data_msg data;  /* stdin stdout stderr fs.data tcp.data */
		struct exec_exited exec_exited;
		struct exec_resize exec_resize;
		struct exec_signal exec_signal;
		struct fs_request fs_request;
		struct fs_response fs_response;
		/* G7-UNION: generation 7 members go here */
	} u;
};

/* Envelope {v, t, p}.  type is MSG_UNKNOWN for an unknown t. */
struct envelope {
	uint8_t v;
	enum msg_type type;
	struct slice type_name;
	struct slice payload;
};

/* 0, or -1 with err set.  Trailing bytes after the map are ignored. */
int envelope_decode(const uint8_t *body, size_t n, struct envelope *env,
		    struct decode_error *err);

/*
 * Decode the payload of a message of type t with the schemas of gen
 * (1 or 7).  Fills defaults, ignores unknown keys, rejects wrong types,
 * duplicate keys, out-of-range integers and NUL in strings that become
 * paths, argv or environment.  0, or -1 with err naming the field.
 */
int payload_decode(enum msg_type t, uint8_t gen, struct slice payload,
		   struct msg *out, struct arena *a, struct decode_error *err);

/* Canonical payload encoding (SPEC 3.1) of m into o. */
void payload_encode(struct cbor_out *o, const struct msg *m);

/*
 * Append a whole frame (header, envelope with v = gen) for m to o.
 * Returns 0, or -1 (nothing appended) when the frame would exceed
 * FRAME_LEN_MAX or o has no room.
 */
int frame_encode_msg(struct cbor_out *o, uint32_t id, uint8_t v,
		     const struct msg *m);
/* The same with an explicit flags byte and a pre-encoded payload. */
int frame_encode_raw(struct cbor_out *o, uint32_t id, uint8_t flags,
		     uint8_t v, const char *type, const void *payload,
		     size_t plen);

#endif
