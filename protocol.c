/* SPDX-License-Identifier: Apache-2.0 */
/*
 * protocol.c - frames, the CBOR subset and the typed messages (SPEC 1-4, 12).
 *
 * Payloads are described by tables (struct field) that drive one generic
 * decoder and one generic encoder, so a message type costs a few table
 * rows instead of a pair of hand-written functions.
 */
#include "protocol.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------ */
/* Arena                                                                */

struct arena_block {
	struct arena_block *next;
	size_t cap, used;
	max_align_t data[];
};

enum { ARENA_BLOCK = 16384 };

void arena_init(struct arena *a, size_t limit)
{
	a->blocks = NULL;
	a->used = 0;
	a->limit = limit;
}

void *arena_alloc(struct arena *a, size_t n)
{
	struct arena_block *b = a->blocks;
	void *p;

	if (n > a->limit - a->used)
		return NULL;
	n = (n + 15) & ~(size_t)15;
	if (n > a->limit - a->used)
		return NULL;
	if (!b || b->cap - b->used < n) {
		size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;

		b = malloc(sizeof(*b) + cap);
		if (!b)
			return NULL;
		b->next = a->blocks;
		b->cap = cap;
		b->used = 0;
		a->blocks = b;
	}
	p = (char *)b->data + b->used;
	b->used += n;
	a->used += n;
	return p;
}

void arena_reset(struct arena *a)
{
	while (a->blocks) {
		struct arena_block *next = a->blocks->next;

		free(a->blocks);
		a->blocks = next;
	}
	a->used = 0;
}

/* ------------------------------------------------------------------ */
/* CBOR encoder                                                         */

void cbor_put_raw(struct cbor_out *o, const void *p, size_t n)
{
	if (o->buf) {
		if (o->overflow || n > o->cap - o->len)
			o->overflow = true;
		else if (n)
			memcpy(o->buf + o->len, p, n);
	}
	o->len += n;
}

static size_t head_size(uint64_t v)
{
	return v < 24 ? 1 : v <= 0xff ? 2 : v <= 0xffff ? 3 : v <= 0xffffffff ? 5 : 9;
}

static void put_head(struct cbor_out *o, unsigned major, uint64_t v)
{
	static const uint8_t ai[] = { 0, 0, 24, 25, 0, 26, 0, 0, 0, 27 };
	uint8_t b[9];
	size_t n = head_size(v), i = n;

	b[0] = (uint8_t)(major << 5 | (n == 1 ? v : ai[n]));
	while (--i) {
		b[i] = (uint8_t)v;
		v >>= 8;
	}
	cbor_put_raw(o, b, n);
}

void cbor_put_uint(struct cbor_out *o, uint64_t v) { put_head(o, 0, v); }

void cbor_put_int(struct cbor_out *o, int64_t v)
{
	if (v < 0)
		put_head(o, 1, (uint64_t)(-(v + 1)));
	else
		put_head(o, 0, (uint64_t)v);
}

void cbor_put_bytes(struct cbor_out *o, const void *p, size_t n)
{
	put_head(o, 2, n);
	cbor_put_raw(o, p, n);
}

void cbor_put_text(struct cbor_out *o, const char *s, size_t n)
{
	put_head(o, 3, n);
	cbor_put_raw(o, s, n);
}

void cbor_put_str(struct cbor_out *o, const char *s)
{
	cbor_put_text(o, s ? s : "", s ? strlen(s) : 0);
}

void cbor_put_array(struct cbor_out *o, uint64_t n) { put_head(o, 4, n); }
void cbor_put_map(struct cbor_out *o, uint64_t n) { put_head(o, 5, n); }

void cbor_put_bool(struct cbor_out *o, bool b)
{
	uint8_t c = b ? 0xf5 : 0xf4;

	cbor_put_raw(o, &c, 1);
}

void cbor_put_null(struct cbor_out *o)
{
	uint8_t c = 0xf6;

	cbor_put_raw(o, &c, 1);
}

/* ------------------------------------------------------------------ */
/* CBOR decoder                                                         */

struct head {
	int major, ai;  /* ai 31 = indefinite length (or break for major 7) */
	uint64_t arg;
};

/*
 * Error texts are assembled by appending, without the printf engine (the
 * agent is built without it).  Truncation never splits a UTF-8 sequence,
 * so a message can go into a CBOR text string as it is.
 */
static void msg_addn(struct decode_error *e, const char *s, size_t max)
{
	size_t len = strlen(e->msg), n = strlen(s);

	if (n > max)
		n = max;
	if (n > sizeof(e->msg) - 1 - len)
		n = sizeof(e->msg) - 1 - len;
	while (n && (s[n] & 0xc0) == 0x80)  /* s[strlen(s)] is NUL: stops */
		n--;
	memcpy(e->msg + len, s, n);
	e->msg[len + n] = 0;
}

static void msg_add(struct decode_error *e, const char *s)
{
	msg_addn(e, s, sizeof(e->msg));
}

static int dfail(struct cbor_in *in, const char *what)
{
	if (in->err && !in->err->msg[0])
		msg_add(in->err, what);
	return -1;
}

static size_t remaining(const struct cbor_in *in)
{
	return (size_t)(in->end - in->p);
}

/*
 * One head.  Declared string lengths and item counts are checked against
 * the bytes that remain here, so no caller ever trusts a length.
 */
static int get_head(struct cbor_in *in, struct head *h)
{
	size_t n;
	uint8_t b;

	if (in->p >= in->end)
		return dfail(in, "truncated CBOR");
	b = *in->p++;
	h->major = b >> 5;
	h->ai = b & 31;
	h->arg = (uint64_t)h->ai;
	if (h->ai == 31) {
		if (h->major < 2 || h->major == 6)
			return dfail(in, "malformed CBOR");
		h->arg = 0;
		return 0;
	}
	if (h->ai >= 28)
		return dfail(in, "malformed CBOR");
	if (h->ai >= 24) {
		n = (size_t)1 << (h->ai - 24);
		if (remaining(in) < n)
			return dfail(in, "truncated CBOR");
		for (h->arg = 0; n; n--)
			h->arg = h->arg << 8 | *in->p++;
	}
	if (h->major == 7 && h->ai == 24 && h->arg < 32)
		return dfail(in, "malformed CBOR");
	if ((h->major == 2 || h->major == 3 || h->major == 4) && h->arg > remaining(in))
		return dfail(in, "truncated CBOR");
	if (h->major == 5 && h->arg > remaining(in) / 2)
		return dfail(in, "truncated CBOR");
	return 0;
}

/* The head of the next data item, semantic tags skipped (SPEC 3.2.4). */
static int get_item(struct cbor_in *in, struct head *h)
{
	do {
		if (get_head(in, h))
			return -1;
	} while (h->major == 6);
	if (h->major == 7 && h->ai == 31)
		return dfail(in, "unexpected break");
	return 0;
}

/* At the break byte of an indefinite container?  Consumes it. */
static int at_break(struct cbor_in *in)
{
	if (in->p >= in->end)
		return dfail(in, "truncated CBOR");
	if (*in->p != 0xff)
		return 0;
	in->p++;
	return 1;
}

/* Entries left in a container: counts down definite ones, or watches for
 * the break of indefinite ones.  1 = another entry, 0 = done, -1 error. */
static int next_entry(struct cbor_in *in, const struct head *h, uint64_t *left)
{
	int r;

	if (h->ai != 31) {
		if (!*left)
			return 0;
		(*left)--;
		return 1;
	}
	r = at_break(in);
	return r < 0 ? -1 : !r;
}

static int enter(struct cbor_in *in)
{
	if (++in->depth > CBOR_DEPTH_MAX)
		return dfail(in, "nesting too deep");
	return 0;
}

static bool utf8_ok(const uint8_t *s, size_t n)
{
	size_t i = 0, k, len;
	uint32_t cp, min;

	while (i < n) {
		uint8_t c = s[i];

		if (c < 0x80) {
			i++;
			continue;
		}
		if ((c & 0xe0) == 0xc0) {
			len = 2; cp = c & 0x1f; min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			len = 3; cp = c & 0x0f; min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			len = 4; cp = c & 0x07; min = 0x10000;
		} else {
			return false;
		}
		if (n - i < len)
			return false;
		for (k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += len;
	}
	return true;
}

/*
 * The content of a string whose head h was read.  A definite string is a
 * slice of the input; the chunks of an indefinite one are validated in a
 * first pass and concatenated into the arena in a second (out == NULL only
 * validates).  Text must be UTF-8, chunk by chunk.
 */
static int read_str(struct cbor_in *in, const struct head *h, struct slice *out)
{
	const uint8_t *start = in->p;
	struct head c = { 0 };
	size_t total = 0;
	uint8_t *d;
	int r;

	if (h->ai != 31) {
		if (h->major == 3 && !utf8_ok(in->p, h->arg))
			return dfail(in, "invalid UTF-8");
		if (out) {
			out->p = in->p;
			out->n = h->arg;
		}
		in->p += h->arg;
		return 0;
	}
	while ((r = at_break(in)) == 0) {
		if (get_head(in, &c))
			return -1;
		if (c.major != h->major || c.ai == 31)
			return dfail(in, "malformed CBOR");
		if (h->major == 3 && !utf8_ok(in->p, c.arg))
			return dfail(in, "invalid UTF-8");
		in->p += c.arg;
		total += c.arg;
	}
	if (r < 0)
		return -1;
	if (!out)
		return 0;
	if (!in->arena || !(d = arena_alloc(in->arena, total + 1)))
		return dfail(in, "too large");
	out->p = d;
	out->n = total;
	for (in->p = start; !at_break(in); d += c.arg) {
		get_head(in, &c);
		memcpy(d, in->p, c.arg);
		in->p += c.arg;
	}
	return 0;
}

int cbor_skip(struct cbor_in *in)
{
	struct head h;
	uint64_t left;
	int r;

	if (get_item(in, &h))
		return -1;
	switch (h.major) {
	case 2:
	case 3:
		return read_str(in, &h, NULL);
	case 4:
	case 5:
		if (enter(in))
			return -1;
		left = h.major == 5 ? h.arg * 2 : h.arg;
		if (h.major == 5 && h.ai == 31) {
			/* a map of pairs: skip key and value per entry */
			while ((r = at_break(in)) == 0)
				if (cbor_skip(in) || cbor_skip(in))
					return -1;
		} else {
			while ((r = next_entry(in, &h, &left)) > 0)
				if (cbor_skip(in))
					return -1;
		}
		in->depth--;
		return r < 0 ? -1 : 0;
	default:
		return 0;
	}
}

/* ------------------------------------------------------------------ */
/* Message tables                                                       */

enum kind {
	K_U8, K_U16, K_U32, K_U64, K_I32, K_I64,
	K_BOOL,
	K_TEXT,    /* const char *, NUL-terminated copy; embedded NUL rejected */
	K_STR,     /* struct slice of text (envelope "t") */
	K_BYTES,   /* struct slice */
	K_TEXTS,   /* const char **, count at aux */
	K_ARRAY,   /* array of structs (sub), element size arg, count at aux */
	K_STRUCT,  /* embedded struct, sub fields relative to it */
	K_FIXED,   /* uint8_t[arg] from an array of u8 or an exact bstr */
	K_ENUM,    /* int from text; sub = NULL-terminated names */
	K_ETAG,    /* externally tagged enum; int at off, sub = variants */
	K_ITAG,    /* internally tagged by "kind"; int at off, sub = variants */
};

enum {
	F_REQ = 1,   /* missing key is an error */
	F_NULL = 2,  /* null accepted (= absent); missing = absent */
	F_OMIT = 4,  /* encoder leaves the key out when absent or empty */
	F_DEF = 8,   /* missing = integer default arg */
};

struct field {
	const char *name;
	uint8_t kind, flags;
	uint16_t off;  /* of the value (the enum for K_ETAG/K_ITAG) */
	uint16_t aux;  /* of the has_ flag or the element count */
	uint16_t arg;
	const void *sub;
};

/*
 * A variant of a tagged enum.  For K_ETAG the content is decoded from the
 * single map value; for K_ITAG content.sub lists the fields that follow
 * "kind".  Offsets in both stay relative to the struct holding the enum.
 */
struct variant {
	const char *name;
	int value;
	struct field content;
};

#define OFF(type, member) ((uint16_t)offsetof(type, member))

/* A field with a has_ flag or an element count at aux. */
static bool uses_aux(const struct field *f)
{
	if (f->kind == K_TEXTS || f->kind == K_ARRAY)
		return true;
	if (f->kind == K_TEXT || f->kind == K_STR || f->kind == K_BYTES ||
	    f->kind == K_ENUM || f->kind == K_ETAG)
		return false;
	return f->flags & (F_NULL | F_OMIT);
}

/* ---- seed payloads (SPEC 4.2) ---- */

static const struct field f_ready[] = {
	{ "boot_time_ns", K_U64, F_REQ, OFF(struct ready, boot_time_ns), 0, 0, 0 },
	{ "init_time_ns", K_U64, F_REQ, OFF(struct ready, init_time_ns), 0, 0, 0 },
	{ "ready_time_ns", K_U64, F_REQ, OFF(struct ready, ready_time_ns), 0, 0, 0 },
	{ "agent_version", K_TEXT, F_OMIT, OFF(struct ready, agent_version), 0, 0, 0 },
	{ 0 }
};

static const struct field f_rlimit[] = {
	{ "resource", K_TEXT, F_REQ, OFF(struct exec_rlimit, resource), 0, 0, 0 },
	{ "soft", K_U64, F_REQ, OFF(struct exec_rlimit, soft), 0, 0, 0 },
	{ "hard", K_U64, F_REQ, OFF(struct exec_rlimit, hard), 0, 0, 0 },
	{ 0 }
};

static const struct field f_exec_request[] = {
	{ "cmd", K_TEXT, F_REQ, OFF(struct exec_request, cmd), 0, 0, 0 },
	{ "args", K_TEXTS, 0, OFF(struct exec_request, args), OFF(struct exec_request, nargs), 0, 0 },
	{ "env", K_TEXTS, 0, OFF(struct exec_request, env), OFF(struct exec_request, nenv), 0, 0 },
	{ "cwd", K_TEXT, F_NULL, OFF(struct exec_request, cwd), 0, 0, 0 },
	{ "user", K_TEXT, F_NULL, OFF(struct exec_request, user), 0, 0, 0 },
	{ "tty", K_BOOL, 0, OFF(struct exec_request, tty), 0, 0, 0 },
	{ "rows", K_U16, F_DEF, OFF(struct exec_request, rows), 0, 24, 0 },
	{ "cols", K_U16, F_DEF, OFF(struct exec_request, cols), 0, 80, 0 },
	{ "rlimits", K_ARRAY, 0, OFF(struct exec_request, rlimits), OFF(struct exec_request, nrlimits),
	  sizeof(struct exec_rlimit), f_rlimit },
	{ 0 }
};

static const struct field f_exec_started[] = {
	{ "pid", K_U32, F_REQ, OFF(struct exec_started, pid), 0, 0, 0 },
	{ 0 }
};

static const struct field f_data[] = {
	{ "data", K_BYTES, F_REQ, OFF(struct data_msg, data), 0, 0, 0 },
	{ 0 }
};

static const struct field f_exec_exited[] = {
	{ "code", K_I32, F_REQ, OFF(struct exec_exited, code), 0, 0, 0 },
	{ "signal", K_I32, F_OMIT, OFF(struct exec_exited, signal), OFF(struct exec_exited, has_signal), 0, 0 },
	{ 0 }
};

static const struct field f_exec_resize[] = {
	{ "rows", K_U16, F_REQ, OFF(struct exec_resize, rows), 0, 0, 0 },
	{ "cols", K_U16, F_REQ, OFF(struct exec_resize, cols), 0, 0, 0 },
	{ 0 }
};

static const struct field f_exec_signal[] = {
	{ "signal", K_I32, F_REQ, OFF(struct exec_signal, signal), 0, 0, 0 },
	{ 0 }
};

#define FSR(member) OFF(struct fs_request, member)

static const struct field f_op_path[] = {
	{ "path", K_TEXT, F_REQ, FSR(path), 0, 0, 0 },
	{ 0 }
};

static const struct field f_op_path_mode[] = {
	{ "path", K_TEXT, F_REQ, FSR(path), 0, 0, 0 },
	{ "mode", K_U32, F_NULL, FSR(mode), FSR(has_mode), 0, 0 },
	{ 0 }
};

static const struct field f_op_src_dst[] = {
	{ "src", K_TEXT, F_REQ, FSR(src), 0, 0, 0 },
	{ "dst", K_TEXT, F_REQ, FSR(dst), 0, 0, 0 },
	{ 0 }
};

#define OP(name, value, fields) { name, value, { name, K_STRUCT, F_REQ, 0, 0, 0, fields } }

static const struct variant v_fsop_seed[] = {
	OP("Stat", FS_STAT, f_op_path),
	OP("List", FS_LIST, f_op_path),
	OP("Read", FS_READ, f_op_path),
	OP("Write", FS_WRITE, f_op_path_mode),
	OP("Mkdir", FS_MKDIR, f_op_path),
	OP("Remove", FS_REMOVE, f_op_path),
	OP("RemoveDir", FS_REMOVE_DIR, f_op_path),
	OP("Copy", FS_COPY, f_op_src_dst),
	OP("Rename", FS_RENAME, f_op_src_dst),
	{ 0 }
};

static const struct field f_fs_request_seed[] = {
	{ "op", K_ETAG, F_REQ, FSR(op), 0, 0, v_fsop_seed },
	{ 0 }
};

static const struct field f_entry_seed[] = {
	{ "path", K_TEXT, F_REQ, OFF(struct fs_entry, path), 0, 0, 0 },
	{ "kind", K_TEXT, F_REQ, OFF(struct fs_entry, kind), 0, 0, 0 },
	{ "size", K_U64, F_REQ, OFF(struct fs_entry, size), 0, 0, 0 },
	{ "mode", K_U32, F_REQ, OFF(struct fs_entry, mode), 0, 0, 0 },
	{ "modified", K_I64, F_NULL, OFF(struct fs_entry, modified), OFF(struct fs_entry, has_modified), 0, 0 },
	{ 0 }
};

#define FSP(member) OFF(struct fs_response, member)

static const struct variant v_fsdata_seed[] = {
	{ "Stat", FS_DATA_STAT, { "Stat", K_STRUCT, F_REQ, FSP(stat), 0, 0, f_entry_seed } },
	{ "List", FS_DATA_LIST, { "List", K_ARRAY, F_REQ, FSP(list), FSP(nlist),
				  sizeof(struct fs_entry), f_entry_seed } },
	{ 0 }
};

static const struct field f_fs_response_seed[] = {
	{ "ok", K_BOOL, F_REQ, FSP(ok), 0, 0, 0 },
	{ "error", K_TEXT, F_NULL, FSP(error), 0, 0, 0 },
	{ "data", K_ETAG, F_NULL, FSP(data_kind), 0, 0, v_fsdata_seed },
	{ 0 }
};

/*
 * The agent speaks only the seed generation (its build defines
 * AGENTD_SEED_ONLY): the generation 7 tables below and the field kinds
 * only they use stay out of its binary.  agentctl, the unit tests and the
 * fuzzers keep the whole codec.
 */
#ifndef AGENTD_SEED_ONLY

/* ---- generation 7 filesystem schemas (SPEC 12.5) ---- */

static const struct field f_set_attrs[] = {
	{ "mode", K_U32, F_NULL, OFF(struct fs_set_attrs, mode), OFF(struct fs_set_attrs, has_mode), 0, 0 },
	{ "uid", K_U32, F_NULL, OFF(struct fs_set_attrs, uid), OFF(struct fs_set_attrs, has_uid), 0, 0 },
	{ "gid", K_U32, F_NULL, OFF(struct fs_set_attrs, gid), OFF(struct fs_set_attrs, has_gid), 0, 0 },
	{ "size", K_U64, F_NULL, OFF(struct fs_set_attrs, size), OFF(struct fs_set_attrs, has_size), 0, 0 },
	{ "atime", K_I64, F_NULL, OFF(struct fs_set_attrs, atime), OFF(struct fs_set_attrs, has_atime), 0, 0 },
	{ "mtime", K_I64, F_NULL, OFF(struct fs_set_attrs, mtime), OFF(struct fs_set_attrs, has_mtime), 0, 0 },
	{ 0 }
};

#define OPT(member) OFF(struct fs_open_options, member)

static const struct field f_open_options[] = {
	{ "read", K_BOOL, F_REQ, OPT(read), 0, 0, 0 },
	{ "write", K_BOOL, F_REQ, OPT(write), 0, 0, 0 },
	{ "append", K_BOOL, F_REQ, OPT(append), 0, 0, 0 },
	{ "create", K_BOOL, F_REQ, OPT(create), 0, 0, 0 },
	{ "truncate", K_BOOL, F_REQ, OPT(truncate), 0, 0, 0 },
	{ "create_new", K_BOOL, F_REQ, OPT(create_new), 0, 0, 0 },
	{ "mode", K_U32, F_NULL, OPT(mode), OPT(has_mode), 0, 0 },
	{ 0 }
};

static const struct field f_op_stat[] = {
	{ "path", K_TEXT, F_REQ, FSR(path), 0, 0, 0 },
	{ "follow_symlink", K_BOOL, F_REQ, FSR(follow_symlink), 0, 0, 0 },
	{ 0 }
};

static const struct field f_op_setstat[] = {
	{ "path", K_TEXT, F_REQ, FSR(path), 0, 0, 0 },
	{ "follow_symlink", K_BOOL, F_REQ, FSR(follow_symlink), 0, 0, 0 },
	{ "attrs", K_STRUCT, F_REQ, FSR(attrs), 0, 0, f_set_attrs },
	{ 0 }
};

static const struct field f_op_symlink[] = {
	{ "target", K_TEXT, F_REQ, FSR(target), 0, 0, 0 },
	{ "link_path", K_TEXT, F_REQ, FSR(link_path), 0, 0, 0 },
	{ 0 }
};

static const struct field f_op_removedir[] = {
	{ "path", K_TEXT, F_REQ, FSR(path), 0, 0, 0 },
	{ "recursive", K_BOOL, F_REQ, FSR(recursive), 0, 0, 0 },
	{ 0 }
};

static const struct field f_op_open_file[] = {
	{ "path", K_TEXT, F_REQ, FSR(path), 0, 0, 0 },
	{ "options", K_STRUCT, F_REQ, FSR(options), 0, 0, f_open_options },
	{ 0 }
};

static const struct field f_op_handle[] = {
	{ "handle", K_U64, F_REQ, FSR(handle), 0, 0, 0 },
	{ 0 }
};

static const struct field f_op_rw[] = {
	{ "handle", K_U64, F_REQ, FSR(handle), 0, 0, 0 },
	{ "offset", K_U64, F_REQ, FSR(offset), 0, 0, 0 },
	{ "len", K_U64, F_NULL, FSR(len), FSR(has_len), 0, 0 },
	{ 0 }
};

static const struct field f_op_readdir[] = {
	{ "handle", K_U64, F_REQ, FSR(handle), 0, 0, 0 },
	{ "limit", K_U32, F_NULL, FSR(limit), FSR(has_limit), 0, 0 },
	{ 0 }
};

static const struct field f_op_fsetstat[] = {
	{ "handle", K_U64, F_REQ, FSR(handle), 0, 0, 0 },
	{ "attrs", K_STRUCT, F_REQ, FSR(attrs), 0, 0, f_set_attrs },
	{ 0 }
};

static const struct variant v_fsop_g7[] = {
	OP("RealPath", FS_REALPATH, f_op_path),
	OP("Stat", FS_STAT, f_op_stat),
	OP("SetStat", FS_SETSTAT, f_op_setstat),
	OP("List", FS_LIST, f_op_path),
	OP("ReadLink", FS_READLINK, f_op_path),
	OP("Symlink", FS_SYMLINK, f_op_symlink),
	OP("Mkdir", FS_MKDIR, f_op_path_mode),
	OP("Remove", FS_REMOVE, f_op_path),
	OP("RemoveDir", FS_REMOVE_DIR, f_op_removedir),
	OP("Copy", FS_COPY, f_op_src_dst),
	OP("Rename", FS_RENAME, f_op_src_dst),
	OP("OpenFile", FS_OPEN_FILE, f_op_open_file),
	OP("OpenDir", FS_OPEN_DIR, f_op_path),
	OP("CloseHandle", FS_CLOSE_HANDLE, f_op_handle),
	OP("Read", FS_READ, f_op_rw),
	OP("Write", FS_WRITE, f_op_rw),
	OP("ReadDir", FS_READ_DIR, f_op_readdir),
	OP("FStat", FS_FSTAT, f_op_handle),
	OP("FSetStat", FS_FSETSTAT, f_op_fsetstat),
	{ 0 }
};

static const struct field f_fs_request_g7[] = {
	{ "op", K_ETAG, F_REQ, FSR(op), 0, 0, v_fsop_g7 },
	{ 0 }
};

#define FSE(member) OFF(struct fs_entry, member)

static const struct field f_entry_g7[] = {
	{ "path", K_TEXT, F_REQ, FSE(path), 0, 0, 0 },
	{ "kind", K_TEXT, F_REQ, FSE(kind), 0, 0, 0 },
	{ "size", K_U64, F_REQ, FSE(size), 0, 0, 0 },
	{ "mode", K_U32, F_REQ, FSE(mode), 0, 0, 0 },
	{ "modified", K_I64, F_NULL, FSE(modified), FSE(has_modified), 0, 0 },
	{ "uid", K_U32, F_REQ, FSE(uid), 0, 0, 0 },
	{ "gid", K_U32, F_REQ, FSE(gid), 0, 0, 0 },
	{ "atime", K_I64, F_NULL, FSE(atime), FSE(has_atime), 0, 0 },
	{ "mtime", K_I64, F_NULL, FSE(mtime), FSE(has_mtime), 0, 0 },
	{ 0 }
};

static const struct variant v_fsdata_g7[] = {
	{ "Stat", FS_DATA_STAT, { "Stat", K_STRUCT, F_REQ, FSP(stat), 0, 0, f_entry_g7 } },
	{ "List", FS_DATA_LIST, { "List", K_ARRAY, F_REQ, FSP(list), FSP(nlist),
				  sizeof(struct fs_entry), f_entry_g7 } },
	{ "Handle", FS_DATA_HANDLE, { "Handle", K_U64, F_REQ, FSP(handle), 0, 0, 0 } },
	{ "Path", FS_DATA_PATH, { "Path", K_TEXT, F_REQ, FSP(path), 0, 0, 0 } },
	{ 0 }
};

static const struct field f_fs_response_g7[] = {
	{ "ok", K_BOOL, F_REQ, FSP(ok), 0, 0, 0 },
	{ "error", K_TEXT, F_NULL, FSP(error), 0, 0, 0 },
	{ "data", K_ETAG, F_NULL, FSP(data_kind), 0, 0, v_fsdata_g7 },
	{ 0 }
};

/* ---- generation 7 bootstrap (SPEC 12.4) ---- */

static const struct field f_mount_flags[] = {
	{ "readonly", K_BOOL, 0, OFF(struct mount_flags, readonly), 0, 0, 0 },
	{ "noexec", K_BOOL, 0, OFF(struct mount_flags, noexec), 0, 0, 0 },
	{ "nosuid", K_BOOL, 0, OFF(struct mount_flags, nosuid), 0, 0, 0 },
	{ "nodev", K_BOOL, 0, OFF(struct mount_flags, nodev), 0, 0, 0 },
	{ 0 }
};

#define FLAGS(type) { "flags", K_STRUCT, 0, OFF(type, flags), 0, 0, f_mount_flags }

static const struct field f_dir_mount[] = {
	{ "tag", K_TEXT, F_REQ, OFF(struct dir_mount, tag), 0, 0, 0 },
	{ "guest_path", K_TEXT, F_REQ, OFF(struct dir_mount, guest_path), 0, 0, 0 },
	FLAGS(struct dir_mount),
	{ 0 }
};

static const struct field f_file_mount[] = {
	{ "tag", K_TEXT, F_REQ, OFF(struct file_mount, tag), 0, 0, 0 },
	{ "filename", K_TEXT, F_REQ, OFF(struct file_mount, filename), 0, 0, 0 },
	{ "guest_path", K_TEXT, F_REQ, OFF(struct file_mount, guest_path), 0, 0, 0 },
	FLAGS(struct file_mount),
	{ 0 }
};

static const struct field f_disk_mount[] = {
	{ "id", K_TEXT, F_REQ, OFF(struct disk_mount, id), 0, 0, 0 },
	{ "guest_path", K_TEXT, F_REQ, OFF(struct disk_mount, guest_path), 0, 0, 0 },
	{ "fstype", K_TEXT, F_NULL | F_OMIT, OFF(struct disk_mount, fstype), 0, 0, 0 },
	FLAGS(struct disk_mount),
	{ 0 }
};

static const struct field f_tmpfs_mount[] = {
	{ "path", K_TEXT, F_REQ, OFF(struct tmpfs_mount, path), 0, 0, 0 },
	{ "size_mib", K_U32, F_NULL | F_OMIT, OFF(struct tmpfs_mount, size_mib),
	  OFF(struct tmpfs_mount, has_size_mib), 0, 0 },
	{ "mode", K_U32, F_NULL | F_OMIT, OFF(struct tmpfs_mount, mode), OFF(struct tmpfs_mount, has_mode), 0, 0 },
	FLAGS(struct tmpfs_mount),
	{ 0 }
};

#define IP(type, n) \
	{ "address", K_FIXED, F_REQ, OFF(type, address), 0, n, 0 }, \
	{ "prefix_len", K_U8, F_REQ, OFF(type, prefix_len), 0, 0, 0 }, \
	{ "gateway", K_FIXED, F_REQ, OFF(type, gateway), 0, n, 0 }, \
	{ "dns", K_FIXED, F_NULL | F_OMIT, OFF(type, dns), OFF(type, has_dns), n, 0 }, \
	{ 0 }

static const struct field f_ipv4[] = { IP(struct ipv4_config, 4) };
static const struct field f_ipv6[] = { IP(struct ipv6_config, 16) };

#define NET(member) OFF(struct net_config, member)

static const struct field f_network[] = {
	{ "interface", K_TEXT, F_REQ, NET(interface), 0, 0, 0 },
	{ "mac", K_FIXED, F_REQ, NET(mac), 0, 6, 0 },
	{ "mtu", K_U16, F_REQ, NET(mtu), 0, 0, 0 },
	{ "ipv4", K_STRUCT, F_NULL | F_OMIT, NET(ipv4), NET(has_ipv4), 0, f_ipv4 },
	{ "ipv6", K_STRUCT, F_NULL | F_OMIT, NET(ipv6), NET(has_ipv6), 0, f_ipv6 },
	{ 0 }
};

static const struct field f_env_var[] = {
	{ "key", K_TEXT, F_REQ, OFF(struct env_var, key), 0, 0, 0 },
	{ "value", K_TEXT, F_REQ, OFF(struct env_var, value), 0, 0, 0 },
	{ 0 }
};

#define HO(member) OFF(struct handoff_init, member)

static const struct field f_handoff[] = {
	{ "cmd", K_TEXT, F_REQ, HO(cmd), 0, 0, 0 },
	{ "args", K_TEXTS, F_OMIT, HO(args), HO(nargs), 0, 0 },
	{ "cwd", K_TEXT, F_NULL | F_OMIT, HO(cwd), 0, 0, 0 },
	{ "env", K_ARRAY, F_OMIT, HO(env), HO(nenv), sizeof(struct env_var), f_env_var },
	{ 0 }
};

#define BS(member) OFF(struct bootstrap, member)

static const struct field f_upper_device[] = {
	{ "device", K_TEXT, F_REQ, BS(block_root.upper.device), 0, 0, 0 },
	{ "fstype", K_TEXT, F_REQ, BS(block_root.upper.fstype), 0, 0, 0 },
	{ 0 }
};

static const struct field f_upper_tmpfs[] = {
	{ "size_mib", K_U32, F_NULL | F_OMIT, BS(block_root.upper.size_mib),
	  BS(block_root.upper.has_size_mib), 0, 0 },
	{ 0 }
};

static const struct variant v_upper[] = {
	OP("device", UPPER_DEVICE, f_upper_device),
	OP("tmpfs", UPPER_TMPFS, f_upper_tmpfs),
	{ 0 }
};

static const struct field f_root_disk_image[] = {
	{ "device", K_TEXT, F_REQ, BS(block_root.device), 0, 0, 0 },
	{ "fstype", K_TEXT, F_NULL | F_OMIT, BS(block_root.fstype), 0, 0, 0 },
	{ 0 }
};

static const struct field f_root_oci_erofs[] = {
	{ "lower", K_TEXT, F_REQ, BS(block_root.lower), 0, 0, 0 },
	{ "upper", K_ITAG, F_REQ, BS(block_root.upper.kind), 0, 0, v_upper },
	{ 0 }
};

static const struct variant v_block_root[] = {
	OP("disk-image", BLOCK_ROOT_DISK_IMAGE, f_root_disk_image),
	OP("oci-erofs", BLOCK_ROOT_OCI_EROFS, f_root_oci_erofs),
	{ 0 }
};

static const char *const security_profiles[] = { "default", "restricted", NULL };

#define MOUNTS(name, type) \
	{ #name, K_ARRAY, F_OMIT, BS(name), BS(n##name), sizeof(type), f_##type }

static const struct field f_bootstrap[] = {
	{ "block_root", K_ITAG, F_NULL | F_OMIT, BS(block_root.kind), BS(has_block_root), 0, v_block_root },
	{ "dir_mounts", K_ARRAY, F_OMIT, BS(dir_mounts), BS(ndir_mounts), sizeof(struct dir_mount), f_dir_mount },
	{ "file_mounts", K_ARRAY, F_OMIT, BS(file_mounts), BS(nfile_mounts), sizeof(struct file_mount),
	  f_file_mount },
	{ "disk_mounts", K_ARRAY, F_OMIT, BS(disk_mounts), BS(ndisk_mounts), sizeof(struct disk_mount),
	  f_disk_mount },
	{ "tmpfs_mounts", K_ARRAY, F_OMIT, BS(tmpfs_mounts), BS(ntmpfs_mounts), sizeof(struct tmpfs_mount),
	  f_tmpfs_mount },
	{ "hostname", K_TEXT, F_NULL | F_OMIT, BS(hostname), 0, 0, 0 },
	{ "host_alias", K_TEXT, F_NULL | F_OMIT, BS(host_alias), 0, 0, 0 },
	{ "network", K_STRUCT, F_NULL | F_OMIT, BS(network), BS(has_network), 0, f_network },
	{ "rlimits", K_ARRAY, F_OMIT, BS(rlimits), BS(nrlimits), sizeof(struct exec_rlimit), f_rlimit },
	{ "user", K_TEXT, F_NULL | F_OMIT, BS(user), 0, 0, 0 },
	{ "default_cwd", K_TEXT, F_NULL | F_OMIT, BS(default_cwd), 0, 0, 0 },
	{ "default_env", K_ARRAY, F_OMIT, BS(default_env), BS(ndefault_env), sizeof(struct env_var),
	  f_env_var },
	{ "security_profile", K_ENUM, 0, BS(security_profile), 0, 0, security_profiles },
	{ "handoff_init", K_STRUCT, F_NULL | F_OMIT, BS(handoff_init), BS(has_handoff_init), 0, f_handoff },
	{ 0 }
};

/* ---- other generation 7 payloads (SPEC 12.5-12.10) ---- */

static const struct field f_uid_gid[] = {
	{ "uid", K_U32, F_REQ, OFF(struct init_resolved, uid), 0, 0, 0 },
	{ "gid", K_U32, F_REQ, OFF(struct init_resolved, gid), 0, 0, 0 },
	{ 0 }
};

static const struct field f_init_resolved[] = {
	{ "default_user", K_STRUCT, F_REQ, 0, 0, 0, f_uid_gid },
	{ 0 }
};

static const struct field f_clock_sync[] = {
	{ "unix_time_nanos", K_U64, F_REQ, OFF(struct clock_sync, unix_time_nanos), 0, 0, 0 },
	{ 0 }
};

static const struct field f_touched[] = {
	{ "activity_seq", K_U64, F_REQ, OFF(struct touched, activity_seq), 0, 0, 0 },
	{ 0 }
};

static const char *const core_error_kinds[] = {
	"malformed_message", "unsupported_message_type", "unsupported_protocol_generation",
	"invalid_flags", "invalid_payload", "invalid_session", NULL
};

static const struct field f_core_error[] = {
	{ "kind", K_ENUM, F_REQ, OFF(struct core_error, kind), 0, 0, core_error_kinds },
	{ "message", K_TEXT, F_REQ, OFF(struct core_error, message), 0, 0, 0 },
	{ "offending_type", K_TEXT, F_NULL | F_OMIT, OFF(struct core_error, offending_type), 0, 0, 0 },
	{ 0 }
};

static const struct field f_exec_stdin_error[] = {
	{ "errno", K_I32, F_NULL, OFF(struct exec_stdin_error, errnum), OFF(struct exec_stdin_error, has_errno),
	  0, 0 },
	{ "errno_name", K_TEXT, F_NULL, OFF(struct exec_stdin_error, errno_name), 0, 0, 0 },
	{ "message", K_TEXT, F_REQ, OFF(struct exec_stdin_error, message), 0, 0, 0 },
	{ 0 }
};

static const char *const exec_failed_kinds[] = {
	"not_found", "permission_denied", "not_executable", "bad_cwd", "bad_args",
	"resource_limit", "user_setup_failed", "out_of_memory", "pty_setup_failed", "other", NULL
};

#define EF(member) OFF(struct exec_failed, member)

static const struct field f_exec_failed[] = {
	{ "kind", K_ENUM, F_REQ, EF(kind), 0, 0, exec_failed_kinds },
	{ "errno", K_I32, F_NULL, EF(errnum), EF(has_errno), 0, 0 },
	{ "errno_name", K_TEXT, F_NULL, EF(errno_name), 0, 0, 0 },
	{ "message", K_TEXT, F_REQ, EF(message), 0, 0, 0 },
	{ "stage", K_TEXT, F_NULL, EF(stage), 0, 0, 0 },
	{ 0 }
};

static const struct field f_relay_disconnected[] = {
	{ "id_start", K_U32, F_REQ, OFF(struct relay_client_disconnected, id_start), 0, 0, 0 },
	{ "id_end_exclusive", K_U32, F_REQ, OFF(struct relay_client_disconnected, id_end_exclusive), 0, 0, 0 },
	{ 0 }
};

static const struct field f_tcp_connect[] = {
	{ "host", K_TEXT, F_REQ, OFF(struct tcp_connect, host), 0, 0, 0 },
	{ "port", K_U16, F_REQ, OFF(struct tcp_connect, port), 0, 0, 0 },
	{ 0 }
};

static const struct field f_tcp_failed[] = {
	{ "error", K_TEXT, F_REQ, OFF(struct tcp_failed, error), 0, 0, 0 },
	{ 0 }
};

#endif /* AGENTD_SEED_ONLY */

static const struct field f_empty[] = { { 0 } };

#ifdef AGENTD_SEED_ONLY
#define G7(table) NULL
#else
#define G7(table) table
#endif

struct msg_desc {
	const char *name;
	const struct field *fields;
	uint8_t flags;
};

static const struct msg_desc msg_descs[MSG_TYPE_COUNT] = {
	[MSG_UNKNOWN] = { "unknown", NULL, 0 },
	[MSG_READY] = { "core.ready", f_ready, 0 },
	[MSG_SHUTDOWN] = { "core.shutdown", NULL, FLAG_SHUTDOWN },
	[MSG_EXEC_REQUEST] = { "core.exec.request", f_exec_request, FLAG_SESSION_START },
	[MSG_EXEC_STARTED] = { "core.exec.started", f_exec_started, 0 },
	[MSG_EXEC_STDIN] = { "core.exec.stdin", f_data, 0 },
	[MSG_EXEC_STDOUT] = { "core.exec.stdout", f_data, 0 },
	[MSG_EXEC_STDERR] = { "core.exec.stderr", f_data, 0 },
	[MSG_EXEC_EXITED] = { "core.exec.exited", f_exec_exited, FLAG_TERMINAL },
	[MSG_EXEC_RESIZE] = { "core.exec.resize", f_exec_resize, 0 },
	[MSG_EXEC_SIGNAL] = { "core.exec.signal", f_exec_signal, 0 },
	[MSG_FS_REQUEST] = { "core.fs.request", f_fs_request_seed, FLAG_SESSION_START },
	[MSG_FS_RESPONSE] = { "core.fs.response", f_fs_response_seed, FLAG_TERMINAL },
	[MSG_FS_DATA] = { "core.fs.data", f_data, 0 },
	[MSG_BOOTSTRAP] = { "core.bootstrap", G7(f_bootstrap), 0 },
	[MSG_INIT_RESOLVED] = { "core.init.resolved", G7(f_init_resolved), 0 },
	[MSG_INIT_ACK] = { "core.init.ack", f_empty, 0 },
	[MSG_RELAY_CLIENT_DISCONNECTED] = { "core.relay.client.disconnected", G7(f_relay_disconnected), 0 },
	[MSG_CLOCK_SYNC] = { "core.clock.sync", G7(f_clock_sync), 0 },
	[MSG_PING] = { "core.ping", f_empty, 0 },
	[MSG_PONG] = { "core.pong", f_empty, FLAG_TERMINAL },
	[MSG_TOUCH] = { "core.touch", f_empty, 0 },
	[MSG_TOUCHED] = { "core.touched", G7(f_touched), FLAG_TERMINAL },
	[MSG_ERROR] = { "core.error", G7(f_core_error), FLAG_TERMINAL },
	[MSG_EXEC_STDIN_ERROR] = { "core.exec.stdin.error", G7(f_exec_stdin_error), 0 },
	[MSG_EXEC_FAILED] = { "core.exec.failed", G7(f_exec_failed), FLAG_TERMINAL },
	[MSG_TCP_CONNECT] = { "core.tcp.connect", G7(f_tcp_connect), FLAG_SESSION_START },
	[MSG_TCP_CONNECTED] = { "core.tcp.connected", f_empty, 0 },
	[MSG_TCP_DATA] = { "core.tcp.data", f_data, 0 },
	[MSG_TCP_EOF] = { "core.tcp.eof", f_empty, 0 },
	[MSG_TCP_CLOSE] = { "core.tcp.close", f_empty, 0 },
	[MSG_TCP_CLOSED] = { "core.tcp.closed", f_empty, FLAG_TERMINAL },
	[MSG_TCP_FAILED] = { "core.tcp.failed", G7(f_tcp_failed), FLAG_TERMINAL },
};

const char *msg_type_name(enum msg_type t)
{
	return (unsigned)t < MSG_TYPE_COUNT ? msg_descs[t].name : "unknown";
}

enum msg_type msg_type_lookup(const uint8_t *s, size_t n)
{
	for (int t = 1; t < MSG_TYPE_COUNT; t++)
		if (strlen(msg_descs[t].name) == n && !memcmp(msg_descs[t].name, s, n))
			return (enum msg_type)t;
	return MSG_UNKNOWN;
}

uint8_t msg_flags(enum msg_type t)
{
	return (unsigned)t < MSG_TYPE_COUNT ? msg_descs[t].flags : 0;
}

static const struct field *msg_fields(enum msg_type t, uint8_t gen)
{
	const struct msg_desc *d = &msg_descs[(unsigned)t < MSG_TYPE_COUNT ? t : 0];

#ifndef AGENTD_SEED_ONLY
	/* the filesystem messages are the only ones whose schema changed */
	if (gen >= 2 && t == MSG_FS_REQUEST)
		return f_fs_request_g7;
	if (gen >= 2 && t == MSG_FS_RESPONSE)
		return f_fs_response_g7;
#endif
	return d->fields;
}

/* ------------------------------------------------------------------ */
/* Table-driven payload decoder                                         */

static bool slice_is(struct slice s, const char *name)
{
	return strlen(name) == s.n && !memcmp(name, s.p, s.n);
}

/* Consumes a null or undefined (after tags): 1, 0 = something else. */
static int take_null(struct cbor_in *in)
{
	const uint8_t *save = in->p;
	struct head h;

	if (get_item(in, &h))
		return -1;
	if (h.major == 7 && (h.ai == 22 || h.ai == 23))
		return 1;
	in->p = save;
	return 0;
}

static int get_typed(struct cbor_in *in, struct head *h, int major, const char *what)
{
	if (get_item(in, h))
		return -1;
	if (h->major != major)
		return dfail(in, what);
	return 0;
}

static void store_int(void *dst, int kind, uint64_t v)
{
	switch (kind) {
	case K_U8: *(uint8_t *)dst = (uint8_t)v; break;
	case K_U16: *(uint16_t *)dst = (uint16_t)v; break;
	case K_U32: *(uint32_t *)dst = (uint32_t)v; break;
	case K_I32: *(int32_t *)dst = (int32_t)v; break;
	default: *(uint64_t *)dst = v; break;  /* K_U64, K_I64 */
	}
}

static int decode_int(struct cbor_in *in, int kind, void *dst)
{
	static const uint64_t max[] = {
		[K_U8] = 0xff, [K_U16] = 0xffff, [K_U32] = 0xffffffff, [K_U64] = UINT64_MAX,
		[K_I32] = INT32_MAX, [K_I64] = INT64_MAX,
	};
	struct head h;

	if (get_item(in, &h))
		return -1;
	if (h.major > 1)
		return dfail(in, "expected integer");
	if (h.arg > max[kind] || (h.major == 1 && kind <= K_U64))
		return dfail(in, "integer out of range");
	/* major 1 encodes -1 - arg; two's complement makes that ~arg */
	store_int(dst, kind, h.major ? ~h.arg : h.arg);
	return 0;
}

/* Text into the arena as a C string; an embedded NUL is rejected because
 * it would silently cut a path, argument or variable short. */
static int decode_text(struct cbor_in *in, const char **dst)
{
	struct head h;
	struct slice s;
	char *d;

	if (get_typed(in, &h, 3, "expected text") || read_str(in, &h, &s))
		return -1;
	if (memchr(s.p, 0, s.n))
		return dfail(in, "text contains NUL");
	if (!in->arena || !(d = arena_alloc(in->arena, s.n + 1)))
		return dfail(in, "too large");
	if (s.n)
		memcpy(d, s.p, s.n);
	d[s.n] = 0;
	*dst = d;
	return 0;
}

/* Items in the array whose head h was read, counted by skipping them on a
 * copy of the cursor: allocations follow what is there, not what the
 * head claims. */
static int count_items(struct cbor_in *in, const struct head *h, size_t *n)
{
	struct cbor_in c = *in;
	uint64_t left = h->arg;
	int r;

	*n = 0;
	while ((r = next_entry(&c, h, &left)) > 0) {
		if (cbor_skip(&c))
			return -1;
		(*n)++;
	}
	return r;
}

static void *alloc_items(struct cbor_in *in, size_t n, size_t size)
{
	void *p = in->arena ? arena_alloc(in->arena, n * size) : NULL;

	if (!p)
		dfail(in, "too large");
	else if (n)
		memset(p, 0, n * size);
	return p;
}

/* A byte string, or an array of u8 (SPEC 3.2.6).  want = exact length
 * for fixed arrays (copied to fixed), 0 for a slice of any length. */
static int decode_bytes(struct cbor_in *in, struct slice *dst, size_t want, uint8_t *fixed)
{
	struct head h;
	uint64_t left;
	uint8_t *d;
	size_t n, i;

	if (get_item(in, &h))
		return -1;
	if (h.major == 2) {
		if (read_str(in, &h, dst))
			return -1;
		if (want && dst->n != want)
			return dfail(in, "wrong length");
		if (fixed)
			memcpy(fixed, dst->p, want);
		return 0;
	}
	if (h.major != 4)
		return dfail(in, want ? "expected array" : "expected bytes");
	if (count_items(in, &h, &n))
		return -1;
	if (want && n != want)
		return dfail(in, "wrong length");
	d = fixed ? fixed : alloc_items(in, n, 1);
	if (!d || enter(in))
		return -1;
	left = h.arg;
	for (i = 0; next_entry(in, &h, &left) > 0; i++) {
		struct head e;

		if (get_typed(in, &e, 0, "expected integer"))
			return -1;
		if (e.arg > 255)
			return dfail(in, "integer out of range");
		d[i] = (uint8_t)e.arg;
	}
	in->depth--;
	dst->p = d;
	dst->n = n;
	return 0;
}

/* A map key: text, or bytes as the reference decoder also accepts. */
static int decode_key(struct cbor_in *in, struct slice *key)
{
	struct head h;

	if (get_item(in, &h))
		return -1;
	if (h.major != 2 && h.major != 3)
		return dfail(in, "map key is not a string");
	return read_str(in, &h, key);
}

/* Puts the field name in front of an error raised inside its value;
 * nested fields build a path: field "network.mac": expected array. */
static int locate(struct cbor_in *in, const char *name)
{
	char tmp[sizeof(in->err->msg)];
	bool nested;

	if (!in->err)
		return -1;
	nested = !strncmp(in->err->msg, "field \"", 7);
	strcpy(tmp, in->err->msg + (nested ? 7 : 0));
	in->err->msg[0] = 0;
	msg_add(in->err, "field \"");
	msg_add(in->err, name);
	msg_add(in->err, nested ? "." : "\": ");
	msg_add(in->err, tmp);
	return -1;
}

static int decode_map(struct cbor_in *in, const struct head *h, const struct field *fields,
		      char *base, bool itag);
static int decode_value(struct cbor_in *in, const struct field *f, char *base);

static int decode_struct(struct cbor_in *in, const struct field *fields, char *base)
{
	struct head h;

	if (get_typed(in, &h, 5, "expected map"))
		return -1;
	return decode_map(in, &h, fields, base, false);
}

static int decode_array(struct cbor_in *in, const struct field *f, char *base)
{
	struct head h;
	uint64_t left;
	size_t n, i, size = f->kind == K_TEXTS ? sizeof(char *) : f->arg;
	char *items;

	if (get_typed(in, &h, 4, "expected array") || count_items(in, &h, &n))
		return -1;
	if (!(items = alloc_items(in, n, size)) || enter(in))
		return -1;
	left = h.arg;
	for (i = 0; next_entry(in, &h, &left) > 0; i++) {
		if (f->kind == K_TEXTS ? decode_text(in, (const char **)(items + i * size))
				       : decode_struct(in, f->sub, items + i * size))
			return -1;
	}
	in->depth--;
	*(char **)(base + f->off) = items;
	*(size_t *)(base + f->aux) = n;
	return 0;
}

static const struct variant *lookup_variant(struct cbor_in *in, const struct variant *v,
					    struct slice s)
{
	for (; v->name; v++)
		if (slice_is(s, v->name))
			return v;
	dfail(in, "unknown variant");
	return NULL;
}

/* {"Variant": content}: a definite map with exactly one entry. */
static int decode_etag(struct cbor_in *in, const struct field *f, char *base)
{
	const struct variant *v;
	struct head h;
	struct slice key;

	if (get_typed(in, &h, 5, "expected map"))
		return -1;
	if (h.ai == 31 || h.arg != 1)
		return dfail(in, "expected a map with exactly one entry");
	if (enter(in) || decode_key(in, &key) || !(v = lookup_variant(in, f->sub, key)))
		return -1;
	*(int *)(base + f->off) = v->value;
	if (decode_value(in, &v->content, base))
		return -1;
	in->depth--;
	return 0;
}

#ifndef AGENTD_SEED_ONLY
static int lookup_name(const char *const *names, struct slice s)
{
	for (int i = 0; names[i]; i++)
		if (slice_is(s, names[i]))
			return i;
	return -1;
}

static int decode_enum(struct cbor_in *in, const struct field *f, char *base)
{
	struct head h;
	struct slice s;
	int i;

	if (get_typed(in, &h, 3, "expected text") || read_str(in, &h, &s))
		return -1;
	if ((i = lookup_name(f->sub, s)) < 0)
		return dfail(in, "unknown variant");
	*(int *)(base + f->off) = i;
	return 0;
}

/* {"kind": "<variant>", fields...}: "kind" may come anywhere (the
 * reference buffers the map), so it is found first on a copy. */
static int decode_itag(struct cbor_in *in, const struct field *f, char *base)
{
	const struct variant *v = NULL;
	struct cbor_in c;
	struct head h, kh;
	struct slice key, name;
	uint64_t left;
	int r;

	if (get_typed(in, &h, 5, "expected map"))
		return -1;
	c = *in;
	left = h.arg;
	while ((r = next_entry(&c, &h, &left)) > 0) {
		if (decode_key(&c, &key))
			return -1;
		if (!slice_is(key, "kind")) {
			if (cbor_skip(&c))
				return -1;
			continue;
		}
		if (v)
			dfail(in, "duplicate key");
		if (v || get_typed(&c, &kh, 3, "expected text") || read_str(&c, &kh, &name) ||
		    !(v = lookup_variant(&c, f->sub, name)))
			return locate(in, "kind");
	}
	if (r < 0)
		return -1;
	if (!v) {
		dfail(in, "missing");
		return locate(in, "kind");
	}
	*(int *)(base + f->off) = v->value;
	return decode_map(in, &h, v->content.sub, base, true);
}
#endif

static int decode_value(struct cbor_in *in, const struct field *f, char *base)
{
	void *dst = base + f->off;
	struct head h;
	int r = take_null(in);

	if (r)
		return r < 0 ? -1 : (f->flags & F_NULL) ? 0 : dfail(in, "null is not allowed");
	if (uses_aux(f) && f->kind != K_TEXTS && f->kind != K_ARRAY)
		base[f->aux] = true;
	switch (f->kind) {
	case K_BOOL:
		if (get_item(in, &h))
			return -1;
		if (h.major != 7 || (h.ai != 20 && h.ai != 21))
			return dfail(in, "expected bool");
		*(bool *)dst = h.ai == 21;
		return 0;
	case K_TEXT:
		return decode_text(in, dst);
	case K_STR:
		return get_typed(in, &h, 3, "expected text") || read_str(in, &h, dst) ? -1 : 0;
	case K_BYTES:
		return decode_bytes(in, dst, 0, NULL);
#ifndef AGENTD_SEED_ONLY
	case K_FIXED: {
		struct slice s;

		return decode_bytes(in, &s, f->arg, dst);
	}
	case K_ENUM:
		return decode_enum(in, f, base);
	case K_ITAG:
		return decode_itag(in, f, base);
#endif
	case K_TEXTS:
	case K_ARRAY:
		return decode_array(in, f, base);
	case K_STRUCT:
		return decode_struct(in, f->sub, dst);
	case K_ETAG:
		return decode_etag(in, f, base);
	default:
		return f->kind <= K_I64 ? decode_int(in, f->kind, dst) : dfail(in, "unsupported field");
	}
}

/*
 * Walks the map whose head h was read, filling the fields it knows:
 * any order, unknown keys skipped, a known key twice is an error, then
 * required fields that never came are reported.
 */
static int decode_map(struct cbor_in *in, const struct head *h, const struct field *fields,
		      char *base, bool itag)
{
	const struct field *f;
	uint32_t seen = 0;
	uint64_t left = h->arg;
	struct slice key;
	int r;

	for (f = fields; f->name; f++)
		if (f->flags & F_DEF)
			store_int(base + f->off, f->kind, f->arg);
	if (enter(in))
		return -1;
	while ((r = next_entry(in, h, &left)) > 0) {
		if (decode_key(in, &key))
			return -1;
		for (f = fields; f->name && !slice_is(key, f->name); f++)
			;
		if (!f->name || (itag && slice_is(key, "kind"))) {
			if (cbor_skip(in))
				return -1;
			continue;
		}
		if (seen & 1u << (f - fields)) {
			dfail(in, "duplicate key");
			return locate(in, f->name);
		}
		seen |= 1u << (f - fields);
		if (decode_value(in, f, base))
			return locate(in, f->name);
	}
	if (r < 0)
		return -1;
	in->depth--;
	for (f = fields; f->name; f++) {
		if ((f->flags & F_REQ) && !(seen & 1u << (f - fields))) {
			dfail(in, "missing");
			return locate(in, f->name);
		}
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Table-driven payload encoder (SPEC 3.1)                              */

static bool present(const struct field *f, const char *base)
{
	const void *p = base + f->off;

	if (f->kind == K_TEXTS || f->kind == K_ARRAY)
		return *(const size_t *)(base + f->aux) != 0;
	if (uses_aux(f))
		return base[f->aux];
	if (f->kind == K_TEXT)
		return *(const char *const *)p != NULL;
	if (f->kind == K_ETAG && (f->flags & F_NULL))
		return *(const int *)p != 0;
	return true;
}

static bool omitted(const struct field *f, const char *base)
{
	if (!(f->flags & F_OMIT))
		return false;
	if (f->kind == K_TEXT && present(f, base))
		return !**(const char *const *)(base + f->off);
	return !present(f, base);
}

#ifndef AGENTD_SEED_ONLY
/* The name of value i, or NULL (encoded as "") past the end. */
static const char *enum_name(const char *const *names, int i)
{
	int k;

	for (k = 0; names[k] && k != i; k++)
		;
	return names[k];
}
#endif

static const struct variant *variant_of(const struct variant *v, int value)
{
	for (; v->name; v++)
		if (v->value == value)
			return v;
	return NULL;
}

static void encode_fields(struct cbor_out *o, const struct field *fields, const char *base,
			  const char *kind);

static void encode_int(struct cbor_out *o, int kind, const void *p)
{
	switch (kind) {
	case K_U8: cbor_put_uint(o, *(const uint8_t *)p); break;
	case K_U16: cbor_put_uint(o, *(const uint16_t *)p); break;
	case K_U32: cbor_put_uint(o, *(const uint32_t *)p); break;
	case K_U64: cbor_put_uint(o, *(const uint64_t *)p); break;
	case K_I32: cbor_put_int(o, *(const int32_t *)p); break;
	default: cbor_put_int(o, *(const int64_t *)p); break;
	}
}

static void encode_array(struct cbor_out *o, const struct field *f, const char *base)
{
	size_t n = *(const size_t *)(base + f->aux), i;
	size_t size = f->kind == K_TEXTS ? sizeof(char *) : f->arg;
	const char *items = *(const char *const *)(base + f->off);

	cbor_put_array(o, n);
	for (i = 0; i < n; i++) {
		if (f->kind == K_TEXTS)
			cbor_put_str(o, *(const char *const *)(items + i * size));
		else
			encode_fields(o, f->sub, items + i * size, NULL);
	}
}

static void encode_value(struct cbor_out *o, const struct field *f, const char *base)
{
	const void *p = base + f->off;
	const struct variant *v;
	const struct slice *s = p;

	if ((f->flags & F_NULL) && !present(f, base)) {
		cbor_put_null(o);
		return;
	}
	switch (f->kind) {
	case K_BOOL:
		cbor_put_bool(o, *(const bool *)p);
		break;
	case K_TEXT:
		cbor_put_str(o, *(const char *const *)p);
		break;
	case K_STR:
		cbor_put_text(o, (const char *)s->p, s->n);
		break;
	case K_BYTES:
		cbor_put_bytes(o, s->p, s->n);
		break;
	case K_TEXTS:
	case K_ARRAY:
		encode_array(o, f, base);
		break;
	case K_STRUCT:
		encode_fields(o, f->sub, p, NULL);
		break;
	case K_ETAG:
		if (!(v = variant_of(f->sub, *(const int *)p))) {
			cbor_put_null(o);
		} else {
			cbor_put_map(o, 1);
			cbor_put_str(o, v->name);
			encode_value(o, &v->content, base);
		}
		break;
#ifndef AGENTD_SEED_ONLY
	case K_FIXED:
		cbor_put_array(o, f->arg);
		for (int i = 0; i < f->arg; i++)
			cbor_put_uint(o, ((const uint8_t *)p)[i]);
		break;
	case K_ENUM:
		cbor_put_str(o, enum_name(f->sub, *(const int *)p));
		break;
	case K_ITAG:
		if (!(v = variant_of(f->sub, *(const int *)p)))
			cbor_put_null(o);
		else
			encode_fields(o, v->content.sub, base, v->name);
		break;
#endif
	default:
		encode_int(o, f->kind, p);
	}
}

/* A map of the fields in table order; kind leads an internally tagged one. */
static void encode_fields(struct cbor_out *o, const struct field *fields, const char *base,
			  const char *kind)
{
	const struct field *f;
	size_t n = kind != NULL;

	for (f = fields; f->name; f++)
		n += !omitted(f, base);
	cbor_put_map(o, n);
	if (kind) {
		cbor_put_text(o, "kind", 4);
		cbor_put_str(o, kind);
	}
	for (f = fields; f->name; f++) {
		if (!omitted(f, base)) {
			cbor_put_str(o, f->name);
			encode_value(o, f, base);
		}
	}
}

void payload_encode(struct cbor_out *o, const struct msg *m)
{
	const struct field *f = msg_fields(m->type, m->gen);

	if (m->type == MSG_SHUTDOWN) {
		/* seed hosts send an empty payload, current ones null */
		if (m->u.shutdown.raw.n)
			cbor_put_raw(o, m->u.shutdown.raw.p, m->u.shutdown.raw.n);
		else if (m->gen >= 2)
			cbor_put_null(o);
		return;
	}
	encode_fields(o, f ? f : f_empty, (const char *)&m->u, NULL);
}

/* ------------------------------------------------------------------ */
/* Envelope and payload entry points                                    */

static const uint8_t empty_input[1];

static void cursor_init(struct cbor_in *in, const uint8_t *p, size_t n, struct arena *a,
			struct decode_error *err)
{
	if (!p)
		p = empty_input;
	in->p = p;
	in->end = p + n;
	in->depth = 0;
	in->arena = a;
	in->err = err;
	err->msg[0] = 0;
}

static int prefix_err(struct decode_error *err, const char *prefix)
{
	char tmp[sizeof(err->msg)];

	strcpy(tmp, err->msg[0] ? err->msg : "invalid");
	err->msg[0] = 0;
	msg_add(err, prefix);
	msg_add(err, ": ");
	msg_add(err, tmp);
	return -1;
}

static const struct field f_envelope[] = {
	{ "v", K_U8, F_REQ, OFF(struct envelope, v), 0, 0, 0 },
	{ "t", K_STR, F_REQ, OFF(struct envelope, type_name), 0, 0, 0 },
	{ "p", K_BYTES, F_REQ, OFF(struct envelope, payload), 0, 0, 0 },
	{ 0 }
};

int envelope_decode_arena(const uint8_t *body, size_t n, struct envelope *env,
			  struct arena *a, struct decode_error *err)
{
	struct decode_error local;
	struct cbor_in in;

	cursor_init(&in, body, n, a, err ? err : &local);
	memset(env, 0, sizeof(*env));
	if (decode_struct(&in, f_envelope, (char *)env))
		return prefix_err(in.err, "envelope");
	env->type = msg_type_lookup(env->type_name.p, env->type_name.n);
	return 0;
}

int envelope_decode(const uint8_t *body, size_t n, struct envelope *env,
		    struct decode_error *err)
{
	return envelope_decode_arena(body, n, env, NULL, err);
}

int payload_decode(enum msg_type t, uint8_t gen, struct slice payload,
		   struct msg *out, struct arena *a, struct decode_error *err)
{
	const struct field *f = msg_fields(t, gen);
	struct decode_error local;
	struct cbor_in in;

	cursor_init(&in, payload.p, payload.n, a, err ? err : &local);
	memset(out, 0, sizeof(*out));
	out->type = t;
	out->gen = gen;
	if (t == MSG_SHUTDOWN) {
		out->u.shutdown.raw = payload;
		return 0;
	}
	if (!f) {
		dfail(&in, "unknown message type");
		return -1;
	}
	if (decode_struct(&in, f, (char *)&out->u))
		return prefix_err(in.err, msg_type_name(t) + 5);  /* skip "core." */
	return 0;
}

/* ------------------------------------------------------------------ */
/* Frame encoding                                                       */

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* Header and envelope up to the payload bytes, after checking that the
 * whole frame is legal and fits. */
static int frame_begin(struct cbor_out *o, uint32_t id, uint8_t flags, uint8_t v,
		       const char *type, size_t plen)
{
	size_t tlen = strlen(type);
	uint64_t body = 7 + head_size(v) + head_size(tlen) + tlen + head_size(plen) + (uint64_t)plen;
	uint8_t hdr[9];

	if (body > FRAME_LEN_MAX - 5)
		return -1;
	if (o->buf && (o->overflow || o->cap - o->len < 9 + body))
		return -1;
	put_be32(hdr, (uint32_t)body + 5);
	put_be32(hdr + 4, id);
	hdr[8] = flags;
	cbor_put_raw(o, hdr, 9);
	cbor_put_map(o, 3);
	cbor_put_text(o, "v", 1);
	cbor_put_uint(o, v);
	cbor_put_text(o, "t", 1);
	cbor_put_text(o, type, tlen);
	cbor_put_text(o, "p", 1);
	put_head(o, 2, plen);
	return 0;
}

int frame_encode_raw(struct cbor_out *o, uint32_t id, uint8_t flags,
		     uint8_t v, const char *type, const void *payload, size_t plen)
{
	if (frame_begin(o, id, flags, v, type, plen))
		return -1;
	cbor_put_raw(o, payload, plen);
	return 0;
}

int frame_encode_data_head(struct cbor_out *o, uint32_t id, uint8_t v,
			   enum msg_type t, size_t n)
{
	size_t plen = 6 + head_size(n) + n;  /* {"data": n bytes} */

	if (frame_begin(o, id, msg_flags(t), v, msg_type_name(t), plen))
		return -1;
	cbor_put_map(o, 1);
	cbor_put_text(o, "data", 4);
	put_head(o, 2, n);
	return 0;
}

int frame_encode_msg(struct cbor_out *o, uint32_t id, uint8_t v, const struct msg *m)
{
	struct cbor_out count = { 0 };

	payload_encode(&count, m);
	if (frame_begin(o, id, msg_flags(m->type), v, msg_type_name(m->type), count.len))
		return -1;
	payload_encode(o, m);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Frame reader (SPEC 1.3-1.5)                                          */

/*
 * The buffer grows to what the frame at the front needs plus one read
 * (at most one maximal frame plus one read, SPEC 1.5) and is given back
 * once it is empty, so a burst of large frames leaves no memory behind.
 */
int frame_reader_init(struct frame_reader *r)
{
	memset(r, 0, sizeof(*r));
	return 0;
}

void frame_reader_free(struct frame_reader *r)
{
	free(r->buf);
	memset(r, 0, sizeof(*r));
}

void frame_reader_trim(struct frame_reader *r)
{
	if (r->start == r->len) {
		free(r->buf);
		r->buf = NULL;
		r->start = r->len = r->cap = 0;
	}
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Bytes the frame at the front needs buffered whole, or 0 if unknown. */
static size_t front_need(const struct frame_reader *r)
{
	uint32_t len;

	if (r->stream_left || r->len - r->start < FRAME_PREFIX)
		return 0;
	len = get_be32(r->buf + r->start);
	return len > FRAME_LEN_MAX ? 0 : FRAME_PREFIX + len;
}

uint8_t *frame_reader_space(struct frame_reader *r, size_t *room)
{
	size_t want, need;
	uint8_t *p;

	if (r->start) {
		memmove(r->buf, r->buf + r->start, r->len - r->start);
		r->len -= r->start;
		r->start = 0;
	}
	if (r->cap > 2 * FRAME_READ_CHUNK && !r->len)
		frame_reader_trim(r);
	need = front_need(r);
	want = (need > r->len ? need : r->len) + FRAME_READ_CHUNK;
	if (want > FRAME_WIRE_MAX + FRAME_READ_CHUNK)
		want = FRAME_WIRE_MAX + FRAME_READ_CHUNK;
	if (r->cap < want) {
		p = realloc(r->buf, want);
		if (p) {
			r->buf = p;
			r->cap = want;
		}
	}
	*room = r->cap - r->len;
	return r->buf ? r->buf + r->len : NULL;
}

void frame_reader_commit(struct frame_reader *r, size_t n)
{
	r->len += n < r->cap - r->len ? n : r->cap - r->len;
}

size_t frame_reader_feed(struct frame_reader *r, const void *p, size_t n)
{
	size_t room, done = 0, k;
	uint8_t *d;

	while (done < n && (d = frame_reader_space(r, &room)) && room) {
		k = n - done < room ? n - done : room;
		memcpy(d, (const uint8_t *)p + done, k);
		frame_reader_commit(r, k);
		done += k;
	}
	return done;
}

/* A definite CBOR head at *p (below end): its major type and argument.
 * 0 when it is incomplete, not definite or not of major `major`. */
static int head_at(const uint8_t **p, const uint8_t *end, unsigned major,
		   uint64_t *v)
{
	unsigned ai;
	size_t n, i;

	if (*p >= end || **p >> 5 != major)
		return 0;
	ai = **p & 31;
	n = ai < 24 ? 0 : ai <= 27 ? (size_t)1 << (ai - 24) : 9;
	if (n > 8 || (size_t)(end - *p) < 1 + n)
		return 0;
	*v = ai < 24 ? ai : 0;
	for (i = 1; i <= n; i++)
		*v = *v << 8 | (*p)[i];
	*p += 1 + n;
	return 1;
}

/* The canonical bytes lit at *p (below end), consumed; 0 if not there. */
static int lit_at(const uint8_t **p, const uint8_t *end, const char *lit, size_t n)
{
	if ((size_t)(end - *p) < n || memcmp(*p, lit, n))
		return 0;
	*p += n;
	return 1;
}

int frame_stream_probe(const struct frame_reader *r, size_t min_data,
		       struct frame_stream *s)
{
	const uint8_t *f, *end, *p;
	uint64_t n, plen;
	uint32_t len;

	if (r->stream_left || r->len - r->start < FRAME_HEADER + 8)
		return 0;
	f = r->buf + r->start;
	end = r->buf + r->len;
	len = get_be32(f);
	if (len > FRAME_LEN_MAX || (size_t)(end - f) >= FRAME_PREFIX + len)
		return 0;  /* bad, or complete: frame_next handles it */
	s->id = get_be32(f + 4);
	s->flags = f[8];
	/* {"v": 0..23, "t": name of 0..23 bytes, "p": ...} */
	p = f + FRAME_HEADER;
	if (!lit_at(&p, end, "\xa3\x61v", 3) || *p > 23 || p[1] != 0x61 ||
	    p[2] != 't' || (p[3] & 0xe0) != 0x60 || (p[3] & 31) > 23 ||
	    end - p < 4 + (p[3] & 31))
		return 0;
	s->v = *p;
	s->type = (struct slice){ p + 4, p[3] & 31u };
	p += 4 + s->type.n;
	if (!lit_at(&p, end, "\x61p", 2) || !head_at(&p, end, 2, &plen) ||
	    (uint64_t)(p - f) + plen != FRAME_PREFIX + (uint64_t)len ||
	    !lit_at(&p, end, "\xa1\x64" "data", 6) || !head_at(&p, end, 2, &n) ||
	    (uint64_t)(p - f) + n != FRAME_PREFIX + (uint64_t)len || n < min_data)
		return 0;
	s->head_len = (size_t)(p - f);
	s->data_len = (size_t)n;
	return 1;
}

void frame_stream_start(struct frame_reader *r, const struct frame_stream *s)
{
	r->start += s->head_len;
	r->stream_left = s->data_len;
}

struct slice frame_stream_data(const struct frame_reader *r)
{
	size_t n = r->len - r->start;

	return (struct slice){ r->buf + r->start, n < r->stream_left ? n : r->stream_left };
}

void frame_stream_consume(struct frame_reader *r, size_t n)
{
	r->start += n;
	r->stream_left -= n;
}

enum frame_status frame_next(struct frame_reader *r, struct frame *f)
{
	size_t avail = r->len - r->start;
	const uint8_t *p;
	uint32_t len;

	if (avail < FRAME_PREFIX || r->stream_left)
		return FRAME_NEED_MORE;  /* (buf may still be NULL) */
	p = r->buf + r->start;
	len = get_be32(p);
	if (len > FRAME_LEN_MAX) {
		/* no resync marker: everything buffered is suspect */
		r->last_bad_len = len;
		r->start = r->len = 0;
		return FRAME_TOO_LARGE;
	}
	if (avail - FRAME_PREFIX < len)
		return FRAME_NEED_MORE;
	r->start += FRAME_PREFIX + len;
	if (len < 5) {
		r->last_bad_len = len;
		return FRAME_TOO_SHORT;
	}
	f->id = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
	f->flags = p[8];
	f->body = p + FRAME_HEADER;
	f->body_len = len - 5;
	return FRAME_OK;
}

/* ------------------------------------------------------------------ */
/* Bootstrap validation (SPEC 12.4)                                     */

static const char *const rlimit_names[] = {
	"cpu", "fsize", "data", "stack", "core", "rss", "nproc", "nofile", "memlock",
	"as", "locks", "sigpending", "msgqueue", "nice", "rtprio", "rttime", NULL
};

int rlimit_lookup(const char *name, bool icase)
{
	for (int i = 0; rlimit_names[i]; i++)
		if (!(icase ? strcasecmp : strcmp)(name, rlimit_names[i]))
			return i;
	return -1;
}

#ifndef AGENTD_SEED_ONLY  /* the agent never receives a bootstrap */
/* "bootstrap: <what>[<i>]: <problem> "<value>"", index and value optional. */
static int vfail(struct decode_error *err, const char *what, long i, const char *problem,
		 const char *value)
{
	char num[24], *p = num + sizeof(num) - 1;

	err->msg[0] = 0;
	msg_add(err, "bootstrap: ");
	msg_add(err, what);
	if (i >= 0) {
		*p = 0;
		do
			*--p = (char)('0' + i % 10);
		while (i /= 10);
		msg_add(err, "[");
		msg_add(err, p);
		msg_add(err, "]");
	}
	msg_add(err, ": ");
	msg_add(err, problem);
	if (value) {
		msg_add(err, " \"");
		msg_addn(err, value, 64);
		msg_add(err, "\"");
	}
	return -1;
}

static bool is_abs(const char *s)
{
	return s && s[0] == '/';
}

static bool is_empty(const char *s)
{
	return !s || !*s;
}

/* A text that must be non-empty when present (NULL passes). */
static int check_set(struct decode_error *err, const char *what, const char *s)
{
	return s && !*s ? vfail(err, what, -1, "is empty", NULL) : 0;
}

static int check_path(struct decode_error *err, const char *what, long i, const char *s)
{
	return is_abs(s) ? 0 : vfail(err, what, i, "path is not absolute", s ? s : "");
}

static int check_env(struct decode_error *err, const char *what, const struct env_var *e, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (is_empty(e[i].key) || strchr(e[i].key, '='))
			return vfail(err, what, (long)i, "invalid key", e[i].key ? e[i].key : "");
	return 0;
}

static int check_root(struct decode_error *err, const struct block_root *r)
{
	if (r->kind == BLOCK_ROOT_DISK_IMAGE)
		return check_path(err, "block_root.device", -1, r->device) ||
		       check_set(err, "block_root.fstype", r->fstype);
	if (check_path(err, "block_root.lower", -1, r->lower))
		return -1;
	if (r->upper.kind != UPPER_DEVICE)
		return 0;
	if (check_path(err, "block_root.upper.device", -1, r->upper.device))
		return -1;
	return is_empty(r->upper.fstype) ? vfail(err, "block_root.upper.fstype", -1, "is empty", NULL) : 0;
}

static int check_mounts(struct decode_error *err, const struct bootstrap *b)
{
	size_t i;

	for (i = 0; i < b->ndir_mounts; i++) {
		if (is_empty(b->dir_mounts[i].tag))
			return vfail(err, "dir_mounts", (long)i, "tag is empty", NULL);
		if (check_path(err, "dir_mounts", (long)i, b->dir_mounts[i].guest_path))
			return -1;
	}
	for (i = 0; i < b->nfile_mounts; i++) {
		if (is_empty(b->file_mounts[i].tag) || is_empty(b->file_mounts[i].filename))
			return vfail(err, "file_mounts", (long)i, "tag or filename is empty", NULL);
		if (check_path(err, "file_mounts", (long)i, b->file_mounts[i].guest_path))
			return -1;
	}
	for (i = 0; i < b->ndisk_mounts; i++) {
		if (is_empty(b->disk_mounts[i].id))
			return vfail(err, "disk_mounts", (long)i, "id is empty", NULL);
		if (b->disk_mounts[i].fstype && !*b->disk_mounts[i].fstype)
			return vfail(err, "disk_mounts", (long)i, "fstype is empty", NULL);
		if (check_path(err, "disk_mounts", (long)i, b->disk_mounts[i].guest_path))
			return -1;
	}
	for (i = 0; i < b->ntmpfs_mounts; i++)
		if (check_path(err, "tmpfs_mounts", (long)i, b->tmpfs_mounts[i].path))
			return -1;
	return 0;
}

static int check_rlimits(struct decode_error *err, const struct exec_rlimit *r, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (!r[i].resource || rlimit_lookup(r[i].resource, true) < 0)
			return vfail(err, "rlimits", (long)i, "unknown resource",
				     r[i].resource ? r[i].resource : "");
		if (r[i].soft > r[i].hard)
			return vfail(err, "rlimits", (long)i, "soft limit above hard limit", NULL);
		for (size_t j = 0; j < i; j++)
			if (!strcmp(r[i].resource, r[j].resource))
				return vfail(err, "rlimits", (long)i, "resource given twice", r[i].resource);
	}
	return 0;
}

static int check_network(struct decode_error *err, const struct net_config *net)
{
	if (is_empty(net->interface))
		return vfail(err, "network.interface", -1, "is empty", NULL);
	if (net->has_ipv4 && net->ipv4.prefix_len > 32)
		return vfail(err, "network.ipv4.prefix_len", -1, "above 32", NULL);
	if (net->has_ipv6 && net->ipv6.prefix_len > 128)
		return vfail(err, "network.ipv6.prefix_len", -1, "above 128", NULL);
	return 0;
}

static int check_handoff(struct decode_error *err, const struct handoff_init *h)
{
	if (!is_abs(h->cmd) && (!h->cmd || strcmp(h->cmd, "auto")))
		return vfail(err, "handoff_init.cmd", -1, "is neither an absolute path nor \"auto\"",
			     h->cmd ? h->cmd : "");
	if (h->cwd && !is_abs(h->cwd))
		return vfail(err, "handoff_init.cwd", -1, "path is not absolute", h->cwd);
	return check_env(err, "handoff_init.env", h->env, h->nenv);
}

int bootstrap_validate(const struct bootstrap *b, struct decode_error *err)
{
	struct decode_error local;

	if (!err)
		err = &local;
	err->msg[0] = 0;
	if ((b->has_block_root && check_root(err, &b->block_root)) || check_mounts(err, b) ||
	    check_set(err, "hostname", b->hostname) || check_set(err, "host_alias", b->host_alias) ||
	    (b->has_network && check_network(err, &b->network)) ||
	    check_rlimits(err, b->rlimits, b->nrlimits) ||
	    check_set(err, "user", b->user) || check_set(err, "default_cwd", b->default_cwd) ||
	    check_env(err, "default_env", b->default_env, b->ndefault_env) ||
	    (b->has_handoff_init && check_handoff(err, &b->handoff_init)))
		return -1;
	return 0;
}
#endif
