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
#define AGENTD_VERSION     "0.1.0"  /* agentd and agentctl: --version, make dist */
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
	size_t stream_left;     /* data bytes of a streamed frame still due */
};

#define FRAME_READ_CHUNK 65536u

int frame_reader_init(struct frame_reader *r);
void frame_reader_free(struct frame_reader *r);
/* Space for the next read; compacts as needed. 0 room = apply backpressure. */
uint8_t *frame_reader_space(struct frame_reader *r, size_t *room);
void frame_reader_commit(struct frame_reader *r, size_t n);
/* Copy in up to n bytes (tests, fuzzers); returns bytes accepted. */
size_t frame_reader_feed(struct frame_reader *r, const void *p, size_t n);
/* Next frame; its body stays valid until the next space/commit/feed.
 * NEED_MORE while a streamed frame's data is still due. */
enum frame_status frame_next(struct frame_reader *r, struct frame *f);
/* Idle: give a buffer holding no bytes back to the allocator. */
void frame_reader_trim(struct frame_reader *r);

/*
 * Streaming a large data frame (SPEC 1.5 allows 4 MiB) to its consumer as
 * it arrives instead of buffering it whole.  Only the canonical shape
 * streams: a frame not yet complete whose envelope is {v, t, p} with p
 * last and whose payload is {"data": bstr} ending with the frame; any
 * other frame is buffered and decoded whole as before.
 */
struct frame_stream {
	uint32_t id;
	uint8_t flags;
	uint64_t v;
	struct slice type;  /* valid until the next space/commit/feed */
	size_t head_len;    /* frame bytes before the data */
	size_t data_len;
};
/* 1: the frame at the front streams (heads parsed, nothing consumed);
 * 0: it does not, or its heads have not all arrived yet. */
int frame_stream_probe(const struct frame_reader *r, size_t min_data,
		       struct frame_stream *s);
/* Consume the heads: the next s->data_len bytes are the stream's. */
void frame_stream_start(struct frame_reader *r, const struct frame_stream *s);
/* The stream's bytes buffered now, and consuming n of them. */
struct slice frame_stream_data(const struct frame_reader *r);
void frame_stream_consume(struct frame_reader *r, size_t n);

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
/* G7-STRUCTS */

/* core.shutdown: the payload is never decoded; raw keeps its bytes so a
 * host can re-send them.  Encoding writes raw, or null (g7) when empty. */
struct shutdown_msg { struct slice raw; };

struct mount_flags { bool readonly, noexec, nosuid, nodev; };

struct dir_mount {
	const char *tag, *guest_path;
	struct mount_flags flags;
};

struct file_mount {
	const char *tag, *filename, *guest_path;
	struct mount_flags flags;
};

struct disk_mount {
	const char *id, *guest_path;
	const char *fstype;  /* NULL = probe /proc/filesystems */
	struct mount_flags flags;
};

struct tmpfs_mount {
	const char *path;
	bool has_size_mib; uint32_t size_mib;
	bool has_mode; uint32_t mode;
	struct mount_flags flags;
};

struct ipv4_config {
	uint8_t address[4];
	uint8_t prefix_len;
	uint8_t gateway[4];
	bool has_dns; uint8_t dns[4];
};

struct ipv6_config {
	uint8_t address[16];
	uint8_t prefix_len;
	uint8_t gateway[16];
	bool has_dns; uint8_t dns[16];
};

struct net_config {
	const char *interface;
	uint8_t mac[6];
	uint16_t mtu;
	bool has_ipv4; struct ipv4_config ipv4;
	bool has_ipv6; struct ipv6_config ipv6;
};

struct env_var { const char *key, *value; };

struct handoff_init {
	const char *cmd;  /* absolute path or "auto" */
	const char **args; size_t nargs;
	const char *cwd;  /* NULL = absent */
	struct env_var *env; size_t nenv;
};

enum block_root_kind { BLOCK_ROOT_DISK_IMAGE, BLOCK_ROOT_OCI_EROFS };
enum upper_kind { UPPER_DEVICE, UPPER_TMPFS };

/* Internally tagged by "kind"; the enum is the first member on purpose. */
struct upper_config {
	enum upper_kind kind;
	const char *device, *fstype;             /* device */
	bool has_size_mib; uint32_t size_mib;    /* tmpfs */
};

struct block_root {
	enum block_root_kind kind;
	const char *device;  /* disk-image */
	const char *fstype;  /* disk-image; NULL = probe */
	const char *lower;   /* oci-erofs */
	struct upper_config upper;  /* oci-erofs */
};

enum security_profile { SECURITY_DEFAULT, SECURITY_RESTRICTED };

struct bootstrap {
	bool has_block_root; struct block_root block_root;
	struct dir_mount *dir_mounts; size_t ndir_mounts;
	struct file_mount *file_mounts; size_t nfile_mounts;
	struct disk_mount *disk_mounts; size_t ndisk_mounts;
	struct tmpfs_mount *tmpfs_mounts; size_t ntmpfs_mounts;
	const char *hostname;     /* NULL = absent */
	const char *host_alias;   /* NULL = absent */
	bool has_network; struct net_config network;
	struct exec_rlimit *rlimits; size_t nrlimits;
	const char *user;         /* NULL = absent */
	const char *default_cwd;  /* NULL = absent */
	struct env_var *default_env; size_t ndefault_env;
	enum security_profile security_profile;
	bool has_handoff_init; struct handoff_init handoff_init;
};

/* SPEC 12.4 validation; 0, or -1 with err->msg saying what is wrong. */
int bootstrap_validate(const struct bootstrap *b, struct decode_error *err);

/* Linux RLIMIT_* number of a resource name (SPEC 5.6), -1 if unknown.
 * icase: generation 7 matches names case-insensitively. */
int rlimit_lookup(const char *name, bool icase);

struct init_resolved { uint32_t uid, gid; };  /* {"default_user": {...}} */
struct clock_sync { uint64_t unix_time_nanos; };
struct touched { uint64_t activity_seq; };

enum core_error_kind {
	CORE_ERR_MALFORMED_MESSAGE,
	CORE_ERR_UNSUPPORTED_MESSAGE_TYPE,
	CORE_ERR_UNSUPPORTED_PROTOCOL_GENERATION,
	CORE_ERR_INVALID_FLAGS,
	CORE_ERR_INVALID_PAYLOAD,
	CORE_ERR_INVALID_SESSION,
};

struct core_error {
	enum core_error_kind kind;
	const char *message;
	const char *offending_type;  /* NULL = omitted */
};

struct exec_stdin_error {
	bool has_errno; int32_t errnum;  /* wire name "errno" */
	const char *errno_name;          /* NULL = null */
	const char *message;
};

enum exec_failed_kind {
	EXEC_FAIL_NOT_FOUND,
	EXEC_FAIL_PERMISSION_DENIED,
	EXEC_FAIL_NOT_EXECUTABLE,
	EXEC_FAIL_BAD_CWD,
	EXEC_FAIL_BAD_ARGS,
	EXEC_FAIL_RESOURCE_LIMIT,
	EXEC_FAIL_USER_SETUP_FAILED,
	EXEC_FAIL_OUT_OF_MEMORY,
	EXEC_FAIL_PTY_SETUP_FAILED,
	EXEC_FAIL_OTHER,
};

struct exec_failed {
	enum exec_failed_kind kind;
	bool has_errno; int32_t errnum;  /* wire name "errno" */
	const char *errno_name;          /* NULL = null */
	const char *message;
	const char *stage;               /* NULL = null */
};

struct relay_client_disconnected { uint32_t id_start, id_end_exclusive; };
struct tcp_connect { const char *host; uint16_t port; };
struct tcp_failed { const char *error; };

struct msg {
	enum msg_type type;
	uint8_t gen;  /* schema generation: 1 = seed; >= 2 uses the g7 fs schemas */
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
		/* G7-UNION; init.ack ping pong touch tcp.connected tcp.eof
		 * tcp.close tcp.closed have empty payloads ({}) */
		struct shutdown_msg shutdown;
		struct bootstrap bootstrap;
		struct init_resolved init_resolved;
		struct clock_sync clock_sync;
		struct touched touched;
		struct core_error core_error;
		struct exec_stdin_error exec_stdin_error;
		struct exec_failed exec_failed;
		struct relay_client_disconnected relay_client_disconnected;
		struct tcp_connect tcp_connect;
		struct tcp_failed tcp_failed;
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
/* The same, but an indefinite-length or array-of-u8 "p" (or a chunked
 * "t") is concatenated in a; envelope_decode rejects those forms. */
int envelope_decode_arena(const uint8_t *body, size_t n, struct envelope *env,
			  struct arena *a, struct decode_error *err);

/*
 * Decode the payload of a message of type t with the schemas of gen
 * (1 or 7).  Fills defaults, ignores unknown keys, rejects wrong types,
 * duplicate keys, out-of-range integers and an embedded NUL in any text
 * (every text becomes a C string: a path, argv, environment...).
 * 0, or -1 with err naming the field path, e.g.
 * "bootstrap: field \"network.mac\": expected array".  Decoded text and
 * arrays live in a; definite byte strings point into payload.
 * core.shutdown is never decoded: u.shutdown.raw is the payload.
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
/* Everything of a {"data": n bytes} frame but the data (which the
 * caller places right after); -1 as frame_encode_msg. */
int frame_encode_data_head(struct cbor_out *o, uint32_t id, uint8_t v,
			   enum msg_type t, size_t n);
int frame_encode_raw(struct cbor_out *o, uint32_t id, uint8_t flags,
		     uint8_t v, const char *type, const void *payload,
		     size_t plen);

#endif
