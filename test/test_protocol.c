/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_protocol.c - the codec against every golden vector, random
 * round trips of every message type, stream splitting, malformed CBOR,
 * bootstrap validation and the kept fuzz regressions.
 */
#include "unit.h"
#include "protocol.h"
#include "../fuzz/fuzz_common.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* A minimal JSON reader, enough for the vector files.                  */

enum json_type { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct json {
	enum json_type type;
	bool b;
	double num;
	char *str;            /* J_STR, NUL-terminated */
	size_t n;             /* J_ARR / J_OBJ entries */
	struct json **items;  /* values */
	char **keys;          /* J_OBJ */
};

struct json_in {
	const char *p, *end;
};

static void json_free(struct json *j)
{
	if (!j)
		return;
	for (size_t i = 0; i < j->n; i++) {
		json_free(j->items[i]);
		if (j->keys)
			free(j->keys[i]);
	}
	free(j->items);
	free(j->keys);
	free(j->str);
	free(j);
}

static void json_ws(struct json_in *in)
{
	while (in->p < in->end && (*in->p == ' ' || *in->p == '\n' || *in->p == '\r' || *in->p == '\t'))
		in->p++;
}

static void put_utf8(char *d, size_t *n, unsigned cp)
{
	if (cp < 0x80) {
		d[(*n)++] = (char)cp;
	} else if (cp < 0x800) {
		d[(*n)++] = (char)(0xc0 | cp >> 6);
		d[(*n)++] = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		d[(*n)++] = (char)(0xe0 | cp >> 12);
		d[(*n)++] = (char)(0x80 | (cp >> 6 & 0x3f));
		d[(*n)++] = (char)(0x80 | (cp & 0x3f));
	} else {
		d[(*n)++] = (char)(0xf0 | cp >> 18);
		d[(*n)++] = (char)(0x80 | (cp >> 12 & 0x3f));
		d[(*n)++] = (char)(0x80 | (cp >> 6 & 0x3f));
		d[(*n)++] = (char)(0x80 | (cp & 0x3f));
	}
}

static char *json_string(struct json_in *in)
{
	char *d;
	size_t n = 0;
	unsigned cp, lo;

	if (in->p >= in->end || *in->p != '"')
		return NULL;
	in->p++;
	d = malloc((size_t)(in->end - in->p) + 1);
	while (in->p < in->end && *in->p != '"') {
		char c = *in->p++;

		if (c != '\\') {
			d[n++] = c;
			continue;
		}
		if (in->p >= in->end)
			break;
		c = *in->p++;
		switch (c) {
		case 'n': d[n++] = '\n'; break;
		case 't': d[n++] = '\t'; break;
		case 'r': d[n++] = '\r'; break;
		case 'b': d[n++] = '\b'; break;
		case 'f': d[n++] = '\f'; break;
		case 'u':
			if (in->end - in->p < 4 || sscanf(in->p, "%4x", &cp) != 1)
				goto bad;
			in->p += 4;
			if (cp >= 0xd800 && cp < 0xdc00 && in->end - in->p >= 6 && in->p[0] == '\\' &&
			    sscanf(in->p + 2, "%4x", &lo) == 1) {
				in->p += 6;
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			}
			put_utf8(d, &n, cp);
			break;
		default: d[n++] = c; break;
		}
	}
	if (in->p >= in->end)
		goto bad;
	in->p++;
	d[n] = 0;
	return d;
bad:
	free(d);
	return NULL;
}

static struct json *json_value(struct json_in *in, int depth);

static bool json_push(struct json *j, struct json *v, char *key)
{
	struct json **items = realloc(j->items, (j->n + 1) * sizeof(*items));
	char **keys = j->type == J_OBJ ? realloc(j->keys, (j->n + 1) * sizeof(*keys)) : NULL;

	if (!items || (j->type == J_OBJ && !keys))
		return false;
	j->items = items;
	if (keys) {
		j->keys = keys;
		keys[j->n] = key;
	}
	items[j->n++] = v;
	return true;
}

static struct json *json_container(struct json_in *in, int depth, enum json_type type)
{
	struct json *j = calloc(1, sizeof(*j)), *v;
	char close = type == J_OBJ ? '}' : ']', *key = NULL;

	j->type = type;
	in->p++;
	json_ws(in);
	if (in->p < in->end && *in->p == close) {
		in->p++;
		return j;
	}
	for (;;) {
		json_ws(in);
		if (type == J_OBJ) {
			if (!(key = json_string(in)))
				goto bad;
			json_ws(in);
			if (in->p >= in->end || *in->p++ != ':')
				goto bad;
		}
		if (!(v = json_value(in, depth + 1)) || !json_push(j, v, key))
			goto bad;
		key = NULL;
		json_ws(in);
		if (in->p < in->end && *in->p == ',') {
			in->p++;
			continue;
		}
		if (in->p < in->end && *in->p == close) {
			in->p++;
			return j;
		}
		goto bad;
	}
bad:
	free(key);
	json_free(j);
	return NULL;
}

static struct json *json_value(struct json_in *in, int depth)
{
	struct json *j;
	char *end;

	json_ws(in);
	if (in->p >= in->end || depth > 64)
		return NULL;
	if (*in->p == '{')
		return json_container(in, depth, J_OBJ);
	if (*in->p == '[')
		return json_container(in, depth, J_ARR);
	j = calloc(1, sizeof(*j));
	if (*in->p == '"') {
		j->type = J_STR;
		if (!(j->str = json_string(in))) {
			free(j);
			return NULL;
		}
	} else if (!strncmp(in->p, "true", 4) || !strncmp(in->p, "false", 5)) {
		j->type = J_BOOL;
		j->b = *in->p == 't';
		in->p += j->b ? 4 : 5;
	} else if (!strncmp(in->p, "null", 4)) {
		in->p += 4;
	} else {
		j->type = J_NUM;
		j->num = strtod(in->p, &end);
		if (end == in->p) {
			free(j);
			return NULL;
		}
		in->p = end;
	}
	return j;
}

static struct json *json_get(const struct json *j, const char *key)
{
	if (!j || j->type != J_OBJ)
		return NULL;
	for (size_t i = 0; i < j->n; i++)
		if (!strcmp(j->keys[i], key))
			return j->items[i];
	return NULL;
}

static const char *json_str(const struct json *j, const char *key)
{
	const struct json *v = json_get(j, key);

	return v && v->type == J_STR ? v->str : NULL;
}

static double json_num(const struct json *j, const char *key)
{
	const struct json *v = json_get(j, key);

	return v && v->type == J_NUM ? v->num : -1;
}

static bool json_bool(const struct json *j, const char *key)
{
	const struct json *v = json_get(j, key);

	return v && v->type == J_BOOL && v->b;
}

static uint8_t *read_file(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	long len;

	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
	    (buf = malloc((size_t)len + 1)) && fread(buf, 1, (size_t)len, f) == (size_t)len) {
		*n = (size_t)len;
		buf[len] = 0;
	} else {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	return buf;
}

static struct json *json_load(const char *path)
{
	size_t n;
	char *text = (char *)read_file(path, &n);
	struct json_in in = { text, text + n };
	struct json *j;

	if (!text)
		return NULL;
	j = json_value(&in, 0);
	free(text);
	return j;
}

/* ------------------------------------------------------------------ */
/* SHA-256 (FIPS 180-4), for the elided vectors.                        */

static const uint32_t sha_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror(uint32_t x, int n) { return x >> n | x << (32 - n); }

static void sha_block(uint32_t h[8], const uint8_t *p)
{
	uint32_t w[64], v[8], t1, t2;
	int i;

	for (i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (; i < 64; i++)
		w[i] = w[i - 16] + (ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ w[i - 15] >> 3) + w[i - 7] +
		       (ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ w[i - 2] >> 10);
	memcpy(v, h, sizeof(v));
	for (i = 0; i < 64; i++) {
		t1 = v[7] + (ror(v[4], 6) ^ ror(v[4], 11) ^ ror(v[4], 25)) + ((v[4] & v[5]) ^ (~v[4] & v[6])) +
		     sha_k[i] + w[i];
		t2 = (ror(v[0], 2) ^ ror(v[0], 13) ^ ror(v[0], 22)) + ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
		memmove(v + 1, v, 7 * sizeof(v[0]));
		v[4] += t1;
		v[0] = t1 + t2;
	}
	for (i = 0; i < 8; i++)
		h[i] += v[i];
}

static void sha256_hex(const uint8_t *p, size_t n, char out[65])
{
	uint32_t h[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
			  0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	uint8_t tail[128] = { 0 };
	size_t full = n / 64 * 64, rest = n - full, tn = rest < 56 ? 64 : 128;
	uint64_t bits = (uint64_t)n * 8;

	for (size_t i = 0; i < full; i += 64)
		sha_block(h, p + i);
	memcpy(tail, p + full, rest);
	tail[rest] = 0x80;
	for (int i = 0; i < 8; i++)
		tail[tn - 1 - i] = (uint8_t)(bits >> (8 * i));
	sha_block(h, tail);
	if (tn == 128)
		sha_block(h, tail + 64);
	for (int i = 0; i < 8; i++)
		snprintf(out + 8 * i, 9, "%08x", h[i]);
}

/* ------------------------------------------------------------------ */
/* Helpers                                                              */

static uint8_t *unhex(const char *h, size_t *n)
{
	size_t len = strlen(h) / 2;
	uint8_t *d = malloc(len + 1);
	unsigned x;

	for (size_t i = 0; i < len; i++) {
		if (sscanf(h + 2 * i, "%2x", &x) != 1) {
			free(d);
			return NULL;
		}
		d[i] = (uint8_t)x;
	}
	*n = len;
	return d;
}

/* Bytes of a vector field: inline hex or the elided fill rule. */
static uint8_t *vector_bytes(const struct json *v, const char *hexkey, const char *elkey, size_t *n)
{
	const struct json *el = json_get(v, elkey);
	const char *hex = json_str(v, hexkey), *sha, *fill;
	size_t plen, count;
	uint8_t *prefix, *d;
	char digest[65];

	if (hex)
		return unhex(hex, n);
	if (!el || !json_str(el, "prefix_hex") || !(prefix = unhex(json_str(el, "prefix_hex"), &plen)))
		return NULL;
	count = (size_t)json_num(el, "fill_count");
	d = malloc(plen + count + 1);
	memcpy(d, prefix, plen);
	fill = json_str(el, "fill_byte");  /* hex text, e.g. "ab" */
	memset(d + plen, fill ? (int)strtol(fill, NULL, 16) : (int)json_num(el, "fill_byte"), count);
	free(prefix);
	*n = plen + count;
	sha256_hex(d, *n, digest);
	sha = json_str(el, "sha256");
	CHECKF(sha && !strcmp(sha, digest), "%s: sha256 of rebuilt bytes", elkey);
	CHECK_EQ_INT(*n, (size_t)json_num(el, "total_len"));
	return d;
}

struct decoded {
	struct frame_reader r;
	struct frame f;
	struct envelope env;
	struct msg m;
	struct arena a;
	struct decode_error err;
};

/*
 * Runs one frame through every receive stage and names the first one
 * that rejects it, with the words the vectors use for `expect`.
 */
static const char *receive(struct decoded *d, const uint8_t *fr, size_t n)
{
	d->r.start = d->r.len = 0;
	d->err.msg[0] = 0;
	arena_reset(&d->a);
	if (frame_reader_feed(&d->r, fr, n) != n)
		return "reader refused input";
	switch (frame_next(&d->r, &d->f)) {
	case FRAME_TOO_LARGE: return "frame_too_large";
	case FRAME_TOO_SHORT: return "frame_too_short";
	case FRAME_NEED_MORE: return "incomplete";
	case FRAME_OK: break;
	}
	if (envelope_decode_arena(d->f.body, d->f.body_len, &d->env, &d->a, &d->err) ||
	    d->env.type == MSG_UNKNOWN) {
		if (!d->err.msg[0])
			snprintf(d->err.msg, sizeof(d->err.msg), "unknown type");
		return "envelope_error";
	}
	if (d->env.type == MSG_BOOTSTRAP) {
		if (d->f.id || d->f.flags || d->env.v < 7)
			return "fatal:bootstrap";
		if (payload_decode(d->env.type, d->env.v, d->env.payload, &d->m, &d->a, &d->err))
			return "payload_error";
		return bootstrap_validate(&d->m.u.bootstrap, &d->err) ? "fatal:bootstrap" : "ok";
	}
	if (d->env.v >= 5 && d->f.flags != msg_flags(d->env.type)) {
		snprintf(d->err.msg, sizeof(d->err.msg), "invalid flags for %s: got %u, expected %u",
			 msg_type_name(d->env.type), d->f.flags, msg_flags(d->env.type));
		return "core_error:invalid_flags";
	}
	if (payload_decode(d->env.type, d->env.v, d->env.payload, &d->m, &d->a, &d->err))
		return d->env.v >= 5 ? "core_error:invalid_payload" : "payload_error";
	return "ok";
}

static uint8_t *encode_payload(const struct msg *m, size_t *n)
{
	struct cbor_out count = { 0 }, o;

	payload_encode(&count, m);
	o = (struct cbor_out){ malloc(count.len + 1), 0, count.len, false };
	payload_encode(&o, m);
	CHECK(!o.overflow && o.len == count.len);
	*n = o.len;
	return o.buf;
}

static bool decoded_init(struct decoded *d)
{
	memset(d, 0, sizeof(*d));
	arena_init(&d->a, 64u << 20);
	return frame_reader_init(&d->r) == 0;
}

static void decoded_free(struct decoded *d)
{
	arena_reset(&d->a);
	frame_reader_free(&d->r);
}

/* ------------------------------------------------------------------ */
/* Golden vectors                                                        */

static bool check_valid_vector(struct decoded *d, const struct json *v, const char *name,
			       const uint8_t *fr, size_t fn)
{
	size_t pn, cn, en, out_len;
	uint8_t *payload = vector_bytes(v, "payload_hex", "payload_elided", &pn);
	const char *chex = json_str(v, "canonical_payload_hex");
	uint8_t *canon = chex ? unhex(chex, &cn) : NULL, *enc = NULL, *frame = NULL;
	bool ok = payload != NULL;
	struct cbor_out o;

	ok &= CHECKF(d->env.payload.n == pn && !memcmp(d->env.payload.p, payload, pn),
		     "%s: envelope payload differs from payload_hex", name);
	ok &= CHECKF(!strcmp(msg_type_name(d->env.type), json_str(v, "type")), "%s: type", name);
	ok &= CHECKF(d->env.v == (uint8_t)json_num(v, "generation"), "%s: v", name);
	ok &= CHECKF(d->f.id == (uint32_t)json_num(v, "id") && d->f.flags == (uint8_t)json_num(v, "flags"),
		     "%s: id/flags", name);
	enc = encode_payload(&d->m, &en);
	if (canon)
		ok &= CHECKF(en == cn && !memcmp(enc, canon, cn), "%s: re-encoding != canonical_payload_hex", name);
	else
		ok &= CHECKF(en == pn && !memcmp(enc, payload, pn), "%s: re-encoding != payload_hex", name);
	if (json_bool(v, "canonical")) {
		out_len = fn + 16;
		frame = malloc(out_len);
		o = (struct cbor_out){ frame, 0, out_len, false };
		ok &= CHECKF(frame_encode_msg(&o, d->f.id, d->env.v, &d->m) == 0, "%s: frame_encode_msg", name);
		ok &= CHECKF(o.len == fn && !memcmp(frame, fr, 9), "%s: frame header", name);
		ok &= CHECKF(o.len == fn && !memcmp(frame + 9, fr + 9, fn - 9), "%s: envelope bytes", name);
		o.len = 0;
		ok &= CHECKF(frame_encode_raw(&o, d->f.id, d->f.flags, d->env.v, json_str(v, "type"), payload,
					      pn) == 0 && o.len == fn && !memcmp(frame, fr, fn),
			     "%s: frame_encode_raw", name);
	}
	free(payload);
	free(canon);
	free(enc);
	free(frame);
	return ok;
}

static bool check_vector(struct decoded *d, const char *name)
{
	char path[512];
	struct json *v;
	uint8_t *fr;
	size_t fn;
	const char *got, *expect;
	bool ok;

	snprintf(path, sizeof(path), "%s/%s.json", unit_vectors_dir, name);
	if (!CHECKF((v = json_load(path)) != NULL, "cannot read %s", path))
		return false;
	expect = json_str(v, "expect");
	fr = vector_bytes(v, "frame_hex", "frame_elided", &fn);
	ok = CHECKF(fr && expect, "%s: frame bytes and expect", name);
	if (ok) {
		got = receive(d, fr, fn);
		ok = CHECKF(!strcmp(got, expect), "%s: expected %s, got %s (%s)", name, expect, got, d->err.msg);
		if (ok && json_bool(v, "valid"))
			ok = check_valid_vector(d, v, name, fr, fn);
		else if (ok)
			ok = CHECKF(!strcmp(got, "ok") || d->err.msg[0] || strstr(got, "frame") ||
				    strstr(got, "bootstrap"), "%s: rejection without a message", name);
	}
	free(fr);
	json_free(v);
	return ok;
}

static void test_vectors(void)
{
	char path[512];
	struct json *index;
	struct decoded d;
	size_t passed = 0, total = 0;

	snprintf(path, sizeof(path), "%s/INDEX.json", unit_vectors_dir);
	index = json_load(path);
	if (!CHECKF(index && index->type == J_ARR, "cannot read %s", path) || !CHECK(decoded_init(&d))) {
		json_free(index);
		return;
	}
	for (size_t i = 0; i < index->n; i++) {
		const char *name = json_str(index->items[i], "name");

		total++;
		if (CHECKF(name != NULL, "INDEX entry %zu has no name", i) && check_vector(&d, name))
			passed++;
	}
	CHECK_EQ_INT(total, 177);
	printf("vectors: %zu of %zu passed\n", passed, total);
	decoded_free(&d);
	json_free(index);
}

/* ------------------------------------------------------------------ */
/* Random messages of every type                                         */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static uint64_t rnd_below(uint64_t n) { return n ? rnd() % n : 0; }
static bool rnd_bool(void) { return rnd() & 1; }

/* Integers that stress the head boundaries, masked to the field width. */
static uint64_t rnd_uint(uint64_t max)
{
	static const uint64_t edges[] = { 0, 1, 23, 24, 255, 256, 65535, 65536, 0xffffffffull,
					  0x100000000ull, UINT64_MAX };
	uint64_t v = rnd_bool() ? edges[rnd_below(11)] : rnd() >> rnd_below(64);

	return v > max ? max : v;
}

static int64_t rnd_sint(int64_t min, int64_t max)
{
	int64_t v = rnd_bool() ? (int64_t)rnd_uint((uint64_t)max) : -1 - (int64_t)rnd_uint((uint64_t)max);

	return v < min ? min : v;
}

static const char *rnd_text(struct arena *a, bool nonempty)
{
	static const char *const pieces[] = { "a", "/", "Z", "0", "=", " ", "\xc3\xa9", "\xe6\x97\xa5",
					      "\xe2\x9c\x93", "\xf0\x9f\x98\x80", "-", "\"" };
	size_t n = rnd_below(rnd_bool() ? 8 : 40) + nonempty, len = 0;
	char *s = arena_alloc(a, n * 4 + 1);

	for (size_t i = 0; i < n; i++) {
		const char *p = pieces[rnd_below(12)];

		memcpy(s + len, p, strlen(p));
		len += strlen(p);
	}
	s[len] = 0;
	return s;
}

static const char *rnd_opt_text(struct arena *a)
{
	return rnd_bool() ? rnd_text(a, true) : NULL;
}

static struct slice rnd_bytes(struct arena *a)
{
	static const size_t sizes[] = { 0, 1, 23, 24, 255, 256, 1000 };
	size_t n = rnd_bool() ? sizes[rnd_below(7)] : rnd_below(100);
	uint8_t *p = arena_alloc(a, n + 1);

	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)rnd();
	return (struct slice){ p, n };
}

static const char **rnd_texts(struct arena *a, size_t *n)
{
	const char **v;

	*n = rnd_below(5);
	v = arena_alloc(a, (*n + 1) * sizeof(*v));
	for (size_t i = 0; i < *n; i++)
		v[i] = rnd_text(a, false);
	return v;
}

static void *rnd_array(struct arena *a, size_t *n, size_t size, size_t max)
{
	void *p;

	*n = rnd_below(max + 1);
	p = arena_alloc(a, *n * size + 1);
	memset(p, 0, *n * size + 1);
	return p;
}

static struct exec_rlimit *rnd_rlimits(struct arena *a, size_t *n)
{
	struct exec_rlimit *r = rnd_array(a, n, sizeof(*r), 3);

	for (size_t i = 0; i < *n; i++)
		r[i] = (struct exec_rlimit){ rnd_text(a, true), rnd_uint(UINT64_MAX), rnd_uint(UINT64_MAX) };
	return r;
}

static struct env_var *rnd_env(struct arena *a, size_t *n)
{
	struct env_var *e = rnd_array(a, n, sizeof(*e), 3);

	for (size_t i = 0; i < *n; i++)
		e[i] = (struct env_var){ rnd_text(a, true), rnd_text(a, false) };
	return e;
}

static void rnd_fixed(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)rnd();
}

static struct mount_flags rnd_flags(void)
{
	return (struct mount_flags){ rnd_bool(), rnd_bool(), rnd_bool(), rnd_bool() };
}

static void rnd_entry(struct fs_entry *e, struct arena *a, bool g7)
{
	e->path = rnd_text(a, false);
	e->kind = rnd_text(a, false);
	e->size = rnd_uint(UINT64_MAX);
	e->mode = (uint32_t)rnd_uint(UINT32_MAX);
	e->has_modified = rnd_bool();
	e->modified = rnd_sint(INT64_MIN, INT64_MAX);
	if (!g7)
		return;
	e->uid = (uint32_t)rnd_uint(UINT32_MAX);
	e->gid = (uint32_t)rnd_uint(UINT32_MAX);
	e->has_atime = rnd_bool();
	e->atime = rnd_sint(INT64_MIN, INT64_MAX);
	e->has_mtime = rnd_bool();
	e->mtime = rnd_sint(INT64_MIN, INT64_MAX);
}

static void rnd_attrs(struct fs_set_attrs *s)
{
	s->has_mode = rnd_bool(); s->mode = (uint32_t)rnd_uint(UINT32_MAX);
	s->has_uid = rnd_bool(); s->uid = (uint32_t)rnd_uint(UINT32_MAX);
	s->has_gid = rnd_bool(); s->gid = (uint32_t)rnd_uint(UINT32_MAX);
	s->has_size = rnd_bool(); s->size = rnd_uint(UINT64_MAX);
	s->has_atime = rnd_bool(); s->atime = rnd_sint(INT64_MIN, INT64_MAX);
	s->has_mtime = rnd_bool(); s->mtime = rnd_sint(INT64_MIN, INT64_MAX);
}

static void rnd_fs_request(struct fs_request *r, struct arena *a, bool g7)
{
	static const enum fs_op seed_ops[] = { FS_STAT, FS_LIST, FS_READ, FS_WRITE, FS_MKDIR, FS_REMOVE,
					       FS_REMOVE_DIR, FS_COPY, FS_RENAME };
	struct fs_open_options *o = &r->options;

	r->op = g7 ? (enum fs_op)rnd_below(FS_FSETSTAT + 1) : seed_ops[rnd_below(9)];
	r->path = rnd_text(a, false);
	r->src = rnd_text(a, false);
	r->dst = rnd_text(a, false);
	r->has_mode = rnd_bool();
	r->mode = (uint32_t)rnd_uint(UINT32_MAX);
	if (!g7)
		return;
	r->follow_symlink = rnd_bool();
	r->recursive = rnd_bool();
	r->target = rnd_text(a, false);
	r->link_path = rnd_text(a, false);
	r->handle = rnd_uint(UINT64_MAX);
	r->offset = rnd_uint(UINT64_MAX);
	r->has_len = rnd_bool(); r->len = rnd_uint(UINT64_MAX);
	r->has_limit = rnd_bool(); r->limit = (uint32_t)rnd_uint(UINT32_MAX);
	rnd_attrs(&r->attrs);
	*o = (struct fs_open_options){ rnd_bool(), rnd_bool(), rnd_bool(), rnd_bool(), rnd_bool(),
				       rnd_bool(), rnd_bool(), (uint32_t)rnd_uint(UINT32_MAX) };
}

static void rnd_fs_response(struct fs_response *r, struct arena *a, bool g7)
{
	r->ok = rnd_bool();
	r->error = rnd_opt_text(a);
	r->data_kind = (enum fs_data_kind)rnd_below(g7 ? 5 : 3);
	rnd_entry(&r->stat, a, g7);
	r->list = rnd_array(a, &r->nlist, sizeof(*r->list), 3);
	for (size_t i = 0; i < r->nlist; i++)
		rnd_entry(&r->list[i], a, g7);
	r->handle = rnd_uint(UINT64_MAX);
	r->path = rnd_text(a, false);
}

static void rnd_ip(uint8_t *addr, uint8_t *prefix, uint8_t *gw, bool *has_dns, uint8_t *dns, size_t n)
{
	rnd_fixed(addr, n);
	*prefix = (uint8_t)rnd();
	rnd_fixed(gw, n);
	*has_dns = rnd_bool();
	rnd_fixed(dns, n);
}

static void rnd_bootstrap(struct bootstrap *b, struct arena *a)
{
	struct block_root *r = &b->block_root;
	struct net_config *net = &b->network;
	size_t i;

	b->has_block_root = rnd_bool();
	r->kind = (enum block_root_kind)rnd_below(2);
	r->device = rnd_text(a, true);
	r->fstype = rnd_opt_text(a);
	r->lower = rnd_text(a, true);
	r->upper.kind = (enum upper_kind)rnd_below(2);
	r->upper.device = rnd_text(a, true);
	r->upper.fstype = rnd_text(a, true);
	r->upper.has_size_mib = rnd_bool();
	r->upper.size_mib = (uint32_t)rnd_uint(UINT32_MAX);
	b->dir_mounts = rnd_array(a, &b->ndir_mounts, sizeof(*b->dir_mounts), 2);
	for (i = 0; i < b->ndir_mounts; i++)
		b->dir_mounts[i] = (struct dir_mount){ rnd_text(a, false), rnd_text(a, false), rnd_flags() };
	b->file_mounts = rnd_array(a, &b->nfile_mounts, sizeof(*b->file_mounts), 2);
	for (i = 0; i < b->nfile_mounts; i++)
		b->file_mounts[i] = (struct file_mount){ rnd_text(a, false), rnd_text(a, false),
							 rnd_text(a, false), rnd_flags() };
	b->disk_mounts = rnd_array(a, &b->ndisk_mounts, sizeof(*b->disk_mounts), 2);
	for (i = 0; i < b->ndisk_mounts; i++)
		b->disk_mounts[i] = (struct disk_mount){ rnd_text(a, false), rnd_text(a, false),
							 rnd_opt_text(a), rnd_flags() };
	b->tmpfs_mounts = rnd_array(a, &b->ntmpfs_mounts, sizeof(*b->tmpfs_mounts), 2);
	for (i = 0; i < b->ntmpfs_mounts; i++)
		b->tmpfs_mounts[i] = (struct tmpfs_mount){ rnd_text(a, false), rnd_bool(),
							   (uint32_t)rnd_uint(UINT32_MAX), rnd_bool(),
							   (uint32_t)rnd_uint(UINT32_MAX), rnd_flags() };
	b->hostname = rnd_opt_text(a);
	b->host_alias = rnd_opt_text(a);
	b->has_network = rnd_bool();
	net->interface = rnd_text(a, false);
	rnd_fixed(net->mac, 6);
	net->mtu = (uint16_t)rnd();
	net->has_ipv4 = rnd_bool();
	rnd_ip(net->ipv4.address, &net->ipv4.prefix_len, net->ipv4.gateway, &net->ipv4.has_dns, net->ipv4.dns, 4);
	net->has_ipv6 = rnd_bool();
	rnd_ip(net->ipv6.address, &net->ipv6.prefix_len, net->ipv6.gateway, &net->ipv6.has_dns, net->ipv6.dns, 16);
	b->rlimits = rnd_rlimits(a, &b->nrlimits);
	b->user = rnd_opt_text(a);
	b->default_cwd = rnd_opt_text(a);
	b->default_env = rnd_env(a, &b->ndefault_env);
	b->security_profile = (enum security_profile)rnd_below(2);
	b->has_handoff_init = rnd_bool();
	b->handoff_init.cmd = rnd_text(a, false);
	b->handoff_init.args = rnd_texts(a, &b->handoff_init.nargs);
	b->handoff_init.cwd = rnd_opt_text(a);
	b->handoff_init.env = rnd_env(a, &b->handoff_init.nenv);
}

static void rnd_msg(struct msg *m, enum msg_type t, uint8_t gen, struct arena *a)
{
	struct exec_request *x = &m->u.exec_request;

	memset(m, 0, sizeof(*m));
	m->type = t;
	m->gen = gen;
	switch (t) {
	case MSG_READY:
		m->u.ready = (struct ready){ rnd_uint(UINT64_MAX), rnd_uint(UINT64_MAX), rnd_uint(UINT64_MAX),
					     rnd_opt_text(a) };
		break;
	case MSG_SHUTDOWN:
		if (rnd_bool())
			m->u.shutdown.raw = (struct slice){ (const uint8_t *)"\xf6", 1 };
		break;
	case MSG_EXEC_REQUEST:
		x->cmd = rnd_text(a, false);
		x->args = rnd_texts(a, &x->nargs);
		x->env = rnd_texts(a, &x->nenv);
		x->cwd = rnd_opt_text(a);
		x->user = rnd_opt_text(a);
		x->tty = rnd_bool();
		x->rows = (uint16_t)rnd_uint(UINT16_MAX);
		x->cols = (uint16_t)rnd_uint(UINT16_MAX);
		x->rlimits = rnd_rlimits(a, &x->nrlimits);
		break;
	case MSG_EXEC_STARTED: m->u.exec_started.pid = (uint32_t)rnd_uint(UINT32_MAX); break;
	case MSG_EXEC_STDIN: case MSG_EXEC_STDOUT: case MSG_EXEC_STDERR: case MSG_FS_DATA: case MSG_TCP_DATA:
		m->u.data.data = rnd_bytes(a);
		break;
	case MSG_EXEC_EXITED:
		m->u.exec_exited = (struct exec_exited){ (int32_t)rnd_sint(INT32_MIN, INT32_MAX), rnd_bool(),
							 (int32_t)rnd_sint(INT32_MIN, INT32_MAX) };
		break;
	case MSG_EXEC_RESIZE:
		m->u.exec_resize = (struct exec_resize){ (uint16_t)rnd(), (uint16_t)rnd() };
		break;
	case MSG_EXEC_SIGNAL: m->u.exec_signal.signal = (int32_t)rnd_sint(INT32_MIN, INT32_MAX); break;
	case MSG_FS_REQUEST: rnd_fs_request(&m->u.fs_request, a, gen >= 2); break;
	case MSG_FS_RESPONSE: rnd_fs_response(&m->u.fs_response, a, gen >= 2); break;
	case MSG_BOOTSTRAP: rnd_bootstrap(&m->u.bootstrap, a); break;
	case MSG_INIT_RESOLVED:
		m->u.init_resolved = (struct init_resolved){ (uint32_t)rnd(), (uint32_t)rnd() };
		break;
	case MSG_RELAY_CLIENT_DISCONNECTED:
		m->u.relay_client_disconnected = (struct relay_client_disconnected){ (uint32_t)rnd(), (uint32_t)rnd() };
		break;
	case MSG_CLOCK_SYNC: m->u.clock_sync.unix_time_nanos = rnd_uint(UINT64_MAX); break;
	case MSG_TOUCHED: m->u.touched.activity_seq = rnd_uint(UINT64_MAX); break;
	case MSG_ERROR:
		m->u.core_error = (struct core_error){ (enum core_error_kind)rnd_below(6), rnd_text(a, false),
						       rnd_opt_text(a) };
		break;
	case MSG_EXEC_STDIN_ERROR:
		m->u.exec_stdin_error = (struct exec_stdin_error){ rnd_bool(), (int32_t)rnd_sint(INT32_MIN, INT32_MAX),
								   rnd_opt_text(a), rnd_text(a, false) };
		break;
	case MSG_EXEC_FAILED:
		m->u.exec_failed = (struct exec_failed){ (enum exec_failed_kind)rnd_below(10), rnd_bool(),
							 (int32_t)rnd_sint(INT32_MIN, INT32_MAX), rnd_opt_text(a),
							 rnd_text(a, false), rnd_opt_text(a) };
		break;
	case MSG_TCP_CONNECT:
		m->u.tcp_connect = (struct tcp_connect){ rnd_text(a, false), (uint16_t)rnd() };
		break;
	case MSG_TCP_FAILED: m->u.tcp_failed.error = rnd_text(a, false); break;
	default:
		break;  /* empty payloads */
	}
}

/* Frame -> reader -> envelope -> payload -> frame again, byte-identical. */
static bool roundtrip_one(struct decoded *d, const struct msg *m, uint32_t id)
{
	static uint8_t buf1[1 << 16], buf2[1 << 16];
	struct cbor_out o1 = { buf1, 0, sizeof(buf1), false }, o2 = { buf2, 0, sizeof(buf2), false };
	const char *got;

	if (frame_encode_msg(&o1, id, m->gen, m) || o1.overflow)
		return CHECKF(false, "%s: frame_encode_msg failed", msg_type_name(m->type));
	got = receive(d, buf1, o1.len);
	if (strcmp(got, "ok") && strcmp(got, "fatal:bootstrap"))
		return CHECKF(false, "%s: %s: %s", msg_type_name(m->type), got, d->err.msg);
	if (frame_encode_msg(&o2, id, m->gen, &d->m))
		return CHECKF(false, "%s: re-encode failed", msg_type_name(m->type));
	return CHECKF(o1.len == o2.len && !memcmp(buf1, buf2, o1.len), "%s gen %u: round trip differs",
		      msg_type_name(m->type), m->gen);
}

static void test_random_roundtrip(void)
{
	struct decoded d;
	struct arena a;
	struct msg m;
	size_t cases = 0, failed = 0;

	if (!CHECK(decoded_init(&d)))
		return;
	arena_init(&a, 64u << 20);
	for (int round = 0; round < 200; round++) {
		for (int t = 1; t < MSG_TYPE_COUNT; t++) {
			rnd_msg(&m, (enum msg_type)t, round & 1 ? PROTO_GEN_CURRENT : PROTO_GEN_SEED, &a);
			/* bootstrap frames must carry id 0, flags 0 and v >= 7 */
			if (t == MSG_BOOTSTRAP)
				m.gen = PROTO_GEN_CURRENT;
			cases++;
			failed += !roundtrip_one(&d, &m, t == MSG_BOOTSTRAP ? 0 : (uint32_t)rnd());
			arena_reset(&a);
		}
	}
	printf("random round trips: %zu cases, %zu failed\n", cases, failed);
	decoded_free(&d);
}

/* ------------------------------------------------------------------ */
/* Streams                                                               */

struct stream {
	uint8_t *buf;
	size_t len;
	uint64_t expect_hash;
	size_t expect_frames;
};

static void stream_add(struct stream *s, const uint8_t *p, size_t n)
{
	s->buf = realloc(s->buf, s->len + n);
	memcpy(s->buf + s->len, p, n);
	s->len += n;
}

/* All small valid vector frames back to back, with a too-short frame
 * (len 3) in the middle that must be skipped exactly. */
static void stream_build(struct stream *s, size_t max_frame)
{
	char path[512];
	struct json *index, *v;
	size_t n;

	snprintf(path, sizeof(path), "%s/INDEX.json", unit_vectors_dir);
	if (!(index = json_load(path)))
		return;
	for (size_t i = 0; i < index->n; i++) {
		snprintf(path, sizeof(path), "%s/%s.json", unit_vectors_dir, json_str(index->items[i], "name"));
		if (!(v = json_load(path)))
			continue;
		if (json_bool(v, "valid") && json_str(v, "frame_hex") &&
		    strlen(json_str(v, "frame_hex")) / 2 <= max_frame) {
			uint8_t *fr = unhex(json_str(v, "frame_hex"), &n);

			stream_add(s, fr, n);
			free(fr);
		}
		if (i == index->n / 2)
			stream_add(s, (const uint8_t *)"\0\0\0\3abc", 7);
		json_free(v);
	}
	json_free(index);
}

static void feed_and_drain(struct frame_reader *r, struct fuzz_trace *t, const uint8_t *p, size_t n)
{
	while (n) {
		size_t k = frame_reader_feed(r, p, n);

		p += k;
		n -= k;
		fuzz_drain(r, t, false);
	}
}

static void test_streams(void)
{
	struct stream s = { 0 };
	struct frame_reader r;
	struct fuzz_trace whole = { 0 }, t;
	size_t split, bad = 0;

	stream_build(&s, 4096);
	if (!CHECK(s.len > 1000) || !CHECK(frame_reader_init(&r) == 0))
		return;
	feed_and_drain(&r, &whole, s.buf, s.len);
	CHECK(whole.frames > 100);
	CHECK_EQ_INT(r.len - r.start, 0);
	for (split = 0; split <= s.len; split++) {
		t = (struct fuzz_trace){ 0 };
		r.start = r.len = 0;
		feed_and_drain(&r, &t, s.buf, split);
		feed_and_drain(&r, &t, s.buf + split, s.len - split);
		bad += t.hash != whole.hash || t.frames != whole.frames;
	}
	CHECKF(bad == 0, "%zu of %zu split points changed the frames", bad, s.len + 1);
	t = (struct fuzz_trace){ 0 };
	r.start = r.len = 0;
	for (size_t i = 0; i < s.len; i++)
		feed_and_drain(&r, &t, s.buf + i, 1);
	CHECK(t.hash == whole.hash && t.frames == whole.frames);
	printf("streams: %zu bytes, %zu frames, split at every boundary and byte by byte\n", s.len,
	       whole.frames);
	frame_reader_free(&r);
	free(s.buf);
}

static void test_frame_limits(void)
{
	static const uint8_t over[4] = { 0x00, 0x40, 0x00, 0x01 };
	size_t cap = FRAME_WIRE_MAX + FRAME_READ_CHUNK, room;
	uint8_t *big = calloc(1, cap), *payload = calloc(1, FRAME_LEN_MAX), small[64];
	struct msg m = { .type = MSG_EXEC_STDOUT, .gen = 1 };
	struct cbor_out o, so = { small, 0, sizeof(small), false };
	struct frame_reader r;
	struct frame f;

	if (!CHECK(frame_reader_init(&r) == 0))
		return;
	/* too large: detected from the prefix alone, everything buffered dropped */
	CHECK_EQ_INT(frame_reader_feed(&r, over, 4), 4);
	CHECK_EQ_INT(frame_next(&r, &f), FRAME_TOO_LARGE);
	CHECK_EQ_INT(r.last_bad_len, 0x400001);
	CHECK_EQ_INT(r.len - r.start, 0);
	frame_reader_feed(&r, (const uint8_t *)"\0\0\0\5\0\0\0\1\0\xff\xff\0\0\0\7", 15);
	CHECK_EQ_INT(frame_next(&r, &f), FRAME_OK);
	CHECK_EQ_INT(f.id, 1);
	CHECK_EQ_INT(frame_next(&r, &f), FRAME_TOO_LARGE);
	CHECK_EQ_INT(r.len - r.start, 0);
	CHECK_EQ_INT(frame_next(&r, &f), FRAME_NEED_MORE);

	/* the largest payload that fits encodes to exactly FRAME_WIRE_MAX
	 * bytes; one byte more is refused and nothing is appended */
	m.u.data.data = (struct slice){ payload, FRAME_LEN_MAX - 50 };
	while (frame_encode_msg(&(struct cbor_out){ 0 }, 2, 1, &m) == 0)
		m.u.data.data.n++;
	o = (struct cbor_out){ big, 0, cap, false };
	CHECK(frame_encode_msg(&o, 2, 1, &m) == -1 && o.len == 0);
	CHECK(frame_encode_raw(&o, 2, 0, 1, "core.exec.stdout", payload, FRAME_LEN_MAX) == -1 && o.len == 0);
	m.u.data.data.n--;
	CHECK(frame_encode_msg(&o, 2, 1, &m) == 0);
	CHECK_EQ_INT(o.len, FRAME_WIRE_MAX);
	CHECK(frame_encode_msg(&so, 2, 1, &m) == -1 && so.len == 0 && !so.overflow);

	/* a maximal frame plus a read chunk fits; the bound applies after
	 * complete frames were extracted, and then a chunk is free again */
	memcpy(big + FRAME_WIRE_MAX, "\0\0\0\5\0\0\0\3\0", 9);
	CHECK_EQ_INT(frame_reader_feed(&r, big, cap), cap);
	frame_reader_space(&r, &room);
	CHECK_EQ_INT(room, 0);
	CHECK_EQ_INT(frame_reader_feed(&r, big, 1), 0);
	CHECK_EQ_INT(frame_next(&r, &f), FRAME_OK);
	CHECK_EQ_INT(f.body_len, FRAME_LEN_MAX - 5);
	CHECK_EQ_INT(frame_next(&r, &f), FRAME_OK);
	CHECK_EQ_INT(f.id, 3);
	frame_reader_space(&r, &room);
	CHECK(room >= FRAME_READ_CHUNK);

	/* too short: exactly 4 + len bytes skipped */
	r.start = r.len = 0;
	frame_reader_feed(&r, (const uint8_t *)"\0\0\0\4wxyz\0\0\0\0\0\0\0\5\0\0\0\011\1", 22);
	CHECK_EQ_INT(frame_next(&r, &f), FRAME_TOO_SHORT);
	CHECK_EQ_INT(frame_next(&r, &f), FRAME_TOO_SHORT);
	CHECK_EQ_INT(frame_next(&r, &f), FRAME_OK);
	CHECK(f.id == 9 && f.flags == 1 && f.body_len == 0);
	CHECK_EQ_INT(frame_next(&r, &f), FRAME_NEED_MORE);
	frame_reader_free(&r);
	free(big);
	free(payload);
}

/* ------------------------------------------------------------------ */
/* Hand-made payloads                                                   */

/* Decodes hex as type t (gen) and returns the error text ("" = ok). */
static const char *try_decode(enum msg_type t, uint8_t gen, const char *hex, struct msg *m,
			      struct arena *a)
{
	static struct decode_error err;
	size_t n;
	uint8_t *p = unhex(hex, &n);
	int r;

	r = payload_decode(t, gen, (struct slice){ p, n }, m, a, &err);
	free(p);
	if (!r)
		return "";
	CHECKF(err.msg[0] != 0, "%s: failure without a message", hex);
	return err.msg;
}

static void expect_err(enum msg_type t, uint8_t gen, const char *hex, const char *want)
{
	struct arena a;
	struct msg m;
	const char *got;

	arena_init(&a, 1 << 20);
	got = try_decode(t, gen, hex, &m, &a);
	CHECKF(strstr(got, want) && (*want || !*got), "%s: got \"%s\", want \"%s\"", hex, got, want);
	arena_reset(&a);
}

static void test_cbor_edges(void)
{
	struct arena a;
	struct msg m;
	char deep[200] = "a2667369676e616c0f6161";  /* {"signal": 15, "a": [[[...]]]} */
	size_t i;

	arena_init(&a, 1 << 20);
	/* the message format the spec gives */
	expect_err(MSG_EXEC_REQUEST, 1, "a163636d6401", "exec.request: field \"cmd\": expected text");
	expect_err(MSG_EXEC_REQUEST, 1, "a0", "exec.request: field \"cmd\": missing");
	/* non-minimal heads, tags everywhere, floats and simple values skipped */
	expect_err(MSG_EXEC_SIGNAL, 1, "a1667369676e616c1b000000000000000f", "");
	expect_err(MSG_EXEC_SIGNAL, 1, "c0a1d82078067369676e616cc10f", "");
	expect_err(MSG_EXEC_SIGNAL, 1, "a2617af93c00667369676e616c0f", "");
	expect_err(MSG_EXEC_SIGNAL, 1, "a3617afb3ff0000000000000617bf8ff667369676e616c0f", "");
	expect_err(MSG_EXEC_SIGNAL, 1, "a2617a9f5f4161ff7f6178ffbf6161f5ffff667369676e616c0f", "");
	/* byte-string keys accepted, other keys refused */
	expect_err(MSG_EXEC_SIGNAL, 1, "a1467369676e616c0f", "");
	expect_err(MSG_EXEC_SIGNAL, 1, "a1010f", "map key is not a string");
	/* malformed */
	expect_err(MSG_EXEC_SIGNAL, 1, "a1667369676e616c1c", "malformed");
	expect_err(MSG_EXEC_SIGNAL, 1, "a2617af818667369676e616c0f", "malformed");
	expect_err(MSG_EXEC_SIGNAL, 1, "a2617a5f4161616261ff667369676e616c0f", "malformed");
	expect_err(MSG_EXEC_SIGNAL, 1, "a2617aff667369676e616c0f", "break");
	expect_err(MSG_EXEC_SIGNAL, 1, "a1667369676e616c3b8000000000000000", "out of range");
	expect_err(MSG_EXEC_SIGNAL, 1, "a1667369676e616c1a80000000", "out of range");
	expect_err(MSG_EXEC_SIGNAL, 1, "a1667369676e616c3a7fffffff", "");
	expect_err(MSG_EXEC_SIGNAL, 1, "a1667369676e616cf93c00", "expected integer");
	/* declared lengths larger than the input: refused before any copy */
	expect_err(MSG_EXEC_STDIN, 1, "a164646174615bffffffffffffffff", "truncated");
	expect_err(MSG_EXEC_STDIN, 1, "a164646174619bffffffffffffffff", "truncated");
	expect_err(MSG_EXEC_STDIN, 1, "a16464617461bbffffffffffffffff", "truncated");
	expect_err(MSG_EXEC_REQUEST, 1, "bbffffffffffffffff", "truncated");
	expect_err(MSG_EXEC_REQUEST, 1, "a163636d647f", "truncated");
	expect_err(MSG_EXEC_REQUEST, 1, "a163636d647fffffffff", "");
	/* bytes as an array of u8, indefinite, tagged */
	CHECK_EQ_STR(try_decode(MSG_EXEC_STDIN, 1, "a164646174618301186218ff", &m, &a), "");
	CHECK(m.u.data.data.n == 3 && m.u.data.data.p[1] == 0x62 && m.u.data.data.p[2] == 0xff);
	expect_err(MSG_EXEC_STDIN, 1, "a1646461746181190100", "out of range");
	expect_err(MSG_EXEC_STDIN, 1, "a16464617461816161", "expected integer");
	CHECK_EQ_STR(try_decode(MSG_EXEC_STDIN, 1, "a1646461746180", &m, &a), "");
	CHECK_EQ_INT(m.u.data.data.n, 0);
	CHECK_EQ_STR(try_decode(MSG_EXEC_STDIN, 1, "a164646174615f40ff", &m, &a), "");
	CHECK_EQ_INT(m.u.data.data.n, 0);
	/* text: UTF-8 validated (overlong, surrogate, beyond U+10FFFF, cut), NUL refused */
	expect_err(MSG_EXEC_REQUEST, 1, "a163636d6462c0af", "invalid UTF-8");
	expect_err(MSG_EXEC_REQUEST, 1, "a163636d6463eda080", "invalid UTF-8");
	expect_err(MSG_EXEC_REQUEST, 1, "a163636d6464f4908080", "invalid UTF-8");
	expect_err(MSG_EXEC_REQUEST, 1, "a163636d6462e282", "invalid UTF-8");
	expect_err(MSG_EXEC_REQUEST, 1, "a163636d647f61e262828cff", "invalid UTF-8");
	expect_err(MSG_EXEC_REQUEST, 1, "a163636d6463610062", "NUL");
	expect_err(MSG_EXEC_REQUEST, 1, "a263636d6461616461726773816100", "NUL");
	expect_err(MSG_EXEC_REQUEST, 1, "a163636d647f62e29c6193ff", "invalid UTF-8");  /* split code point */
	CHECK_EQ_STR(try_decode(MSG_EXEC_REQUEST, 1, "a163636d647f62c3a963e29c93ff", &m, &a), "");
	CHECK_EQ_STR(m.u.exec_request.cmd, "\xc3\xa9\xe2\x9c\x93");
	/* undefined as null; null for a defaulted field refused */
	CHECK_EQ_STR(try_decode(MSG_EXEC_REQUEST, 1, "a263636d64617863637764f7", &m, &a), "");
	CHECK(m.u.exec_request.cwd == NULL && m.u.exec_request.rows == 24 && m.u.exec_request.cols == 80);
	expect_err(MSG_EXEC_REQUEST, 1, "a263636d646178636377640f", "field \"cwd\": expected text");
	expect_err(MSG_EXEC_REQUEST, 1, "a263636d6461786178f6", "");
	expect_err(MSG_EXEC_REQUEST, 1, "a263636d64617863747479f6", "field \"tty\": null");
	expect_err(MSG_EXEC_REQUEST, 1, "a263636d64617864617267738101", "field \"args\": expected text");
	/* depth: nesting beyond CBOR_DEPTH_MAX is refused, even in skipped values */
	for (i = 0; i < 20; i++)
		strcat(deep, "81");
	strcat(deep, "00");
	expect_err(MSG_EXEC_SIGNAL, 1, deep, "too deep");
	strcpy(deep, "a263636d6461786461726773");  /* {"cmd": "x", "args": [[[...]]]} */
	for (i = 0; i < 20; i++)
		strcat(deep, "81");
	strcat(deep, "00");
	expect_err(MSG_EXEC_REQUEST, 1, deep, "field \"args\": nesting too deep");
	/* externally tagged: indefinite, two entries, unknown variant */
	expect_err(MSG_FS_REQUEST, 1, "a1626f70bf6453746174a1647061746861", "exactly one entry");
	expect_err(MSG_FS_REQUEST, 1, "a1626f70a1644c697374a0", "field \"op.path\": missing");
	CHECK_EQ_STR(try_decode(MSG_FS_REQUEST, 1, "a1626f70a1644c697374a16470617468612f", &m, &a), "");
	CHECK(m.u.fs_request.op == FS_LIST && !strcmp(m.u.fs_request.path, "/"));
	expect_err(MSG_FS_REQUEST, 7, "a1626f70a1644c697374a16470617468612f", "");
	expect_err(MSG_FS_REQUEST, 7, "a1626f70a16453746174a16470617468612f", "follow_symlink");
	/* g7 FsEntryInfo needs uid/gid; the seed one does not decode under g7 */
	expect_err(MSG_FS_RESPONSE, 7,
		   "a3626f6bf5656572726f72f66464617461a16453746174a56470617468612f646b696e646466696c656473697a6500646d6f646500686d6f646966696564f6",
		   "uid\": missing");
	/* internally tagged: kind anywhere, once, known */
	CHECK_EQ_STR(try_decode(MSG_BOOTSTRAP, 7,
				"a16a626c6f636b5f726f6f74a266646576696365682f6465762f766461646b696e646a6469736b2d696d616765",
				&m, &a), "");
	CHECK(m.u.bootstrap.has_block_root && m.u.bootstrap.block_root.kind == BLOCK_ROOT_DISK_IMAGE);
	CHECK_EQ_STR(m.u.bootstrap.block_root.device, "/dev/vda");
	expect_err(MSG_BOOTSTRAP, 7, "a16a626c6f636b5f726f6f74a166646576696365682f6465762f766461",
		   "field \"block_root.kind\": missing");
	expect_err(MSG_BOOTSTRAP, 7,
		   "a16a626c6f636b5f726f6f74a3646b696e646a6469736b2d696d61676566646576696365612f646b696e646a6469736b2d696d616765",
		   "duplicate");
	/* fixed arrays: exact-length byte string accepted, other lengths refused */
	CHECK_EQ_STR(try_decode(MSG_BOOTSTRAP, 7,
				"a1676e6574776f726ba369696e746572666163656165636d616346020000000002636d747501",
				&m, &a), "");
	CHECK(m.u.bootstrap.has_network && m.u.bootstrap.network.mac[0] == 2 && m.u.bootstrap.network.mac[5] == 2);
	expect_err(MSG_BOOTSTRAP, 7, "a1676e6574776f726ba369696e746572666163656165636d6163450200000000636d747501",
		   "network.mac\": wrong length");
	expect_err(MSG_BOOTSTRAP, 7, "a17073656375726974795f70726f66696c6563666f6f", "unknown variant");
	/* trailing bytes after the payload item are ignored */
	CHECK_EQ_STR(try_decode(MSG_EXEC_SIGNAL, 1, "a1667369676e616c0fffff", &m, &a), "");
	/* arena limit: a payload that needs more scratch than allowed fails */
	{
		struct arena tiny;
		struct decode_error err;
		size_t n;
		uint8_t *p = unhex("a263636d64617864617267738561616162616361646165", &n);

		arena_init(&tiny, 16);
		CHECK(payload_decode(MSG_EXEC_REQUEST, 1, (struct slice){ p, n }, &m, &tiny, &err) == -1);
		CHECK(strstr(err.msg, "too large") != NULL);
		arena_reset(&tiny);
		free(p);
	}
	/* cbor_skip on its own */
	{
		struct decode_error err = { { 0 } };
		static const uint8_t item[] = { 0xbf, 0x61, 0x61, 0xc2, 0x42, 0, 1, 0xff, 0x00 };
		struct cbor_in in = { item, item + sizeof(item), 0, NULL, &err };

		CHECK(cbor_skip(&in) == 0 && in.p == item + 8);
		in = (struct cbor_in){ item, item + 5, 0, NULL, &err };
		CHECK(cbor_skip(&in) == -1);
	}
	/* envelope: unknown keys skipped, repeated key refused, unknown t tolerated */
	{
		struct envelope env;
		struct decode_error err;
		size_t n;
		uint8_t *p = unhex("a4617801617607617467636f72652e7878617040", &n);

		CHECK(envelope_decode(p, n, &env, &err) == 0 && env.type == MSG_UNKNOWN && env.v == 7);
		free(p);
		p = unhex("a3617601617601617040", &n);
		CHECK(envelope_decode(p, n, &env, &err) == -1 && strstr(err.msg, "duplicate"));
		free(p);
		p = unhex("a3617601617469636f72652e70696e6761705f4140ff", &n);
		CHECK(envelope_decode(p, n, &env, &err) == -1);
		CHECK(envelope_decode_arena(p, n, &env, &a, &err) == 0 && env.type == MSG_PING &&
		      env.payload.n == 1 && env.payload.p[0] == 0x40);
		free(p);
	}
	arena_reset(&a);
}

static void test_encoder(void)
{
	static const int64_t ints[] = { 0, 23, 24, 255, 256, 65535, 65536, 4294967295ll, 4294967296ll,
					-1, -24, -25, -256, -257, -2147483648ll, INT64_MIN, INT64_MAX };
	static const char *const want[] = { "00", "17", "1818", "18ff", "190100", "19ffff", "1a00010000",
					    "1affffffff", "1b0000000100000000", "20", "37", "3818", "38ff",
					    "390100", "3a7fffffff", "3b7fffffffffffffff", "1b7fffffffffffffff" };
	uint8_t buf[16];
	char hex[40];
	struct cbor_out o;

	for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
		o = (struct cbor_out){ buf, 0, sizeof(buf), false };
		cbor_put_int(&o, ints[i]);
		for (size_t k = 0; k < o.len; k++)
			snprintf(hex + 2 * k, 3, "%02x", buf[k]);
		CHECK_EQ_STR(hex, want[i]);
	}
	o = (struct cbor_out){ buf, 0, 2, false };
	cbor_put_uint(&o, UINT64_MAX);
	CHECK(o.overflow && o.len == 9);
	cbor_put_null(&o);
	CHECK(o.overflow && o.len == 10);
	o = (struct cbor_out){ NULL, 0, 0, false };
	cbor_put_text(&o, "abc", 3);
	cbor_put_bool(&o, true);
	CHECK(!o.overflow && o.len == 5);
	CHECK_EQ_STR(msg_type_name(msg_type_lookup((const uint8_t *)"core.tcp.closed", 15)), "core.tcp.closed");
	CHECK_EQ_INT(msg_type_lookup((const uint8_t *)"core.tcp.close", 13), MSG_UNKNOWN);
	CHECK_EQ_INT(msg_flags(MSG_SHUTDOWN), FLAG_SHUTDOWN);
	CHECK_EQ_INT(msg_flags(MSG_TCP_CONNECT), FLAG_SESSION_START);
	CHECK_EQ_INT(msg_flags(MSG_PONG), FLAG_TERMINAL);
}

/* ------------------------------------------------------------------ */
/* Bootstrap validation                                                 */

static void expect_invalid(struct bootstrap b, const char *want)
{
	struct decode_error err;

	CHECKF(bootstrap_validate(&b, &err) == -1 && strstr(err.msg, want), "want \"%s\", got \"%s\"", want,
	       err.msg);
}

static void test_bootstrap_validate(void)
{
	struct exec_rlimit rl[2] = { { "NOFILE", 1, 2 }, { "nofile", 1, 2 } };
	struct env_var env[1] = { { "A=B", "x" } };
	struct dir_mount dm[1] = { { "tag", "relative", { 0 } } };
	struct disk_mount dk[1] = { { "", "/data", NULL, { 0 } } };
	struct bootstrap b = { 0 }, t;
	struct decode_error err;

	CHECK(bootstrap_validate(&b, &err) == 0);
	b.rlimits = rl;
	b.nrlimits = 2;
	CHECK(bootstrap_validate(&b, &err) == 0);  /* names compared as sent */
	rl[1].resource = "NOFILE";
	expect_invalid(b, "twice");
	rl[1] = (struct exec_rlimit){ "bogus", 1, 2 };
	expect_invalid(b, "unknown resource");
	rl[1] = (struct exec_rlimit){ "core", 3, 2 };
	expect_invalid(b, "soft limit above hard");
	b.nrlimits = 0;
	t = b; t.default_env = env; t.ndefault_env = 1;
	expect_invalid(t, "invalid key");
	t = b; t.dir_mounts = dm; t.ndir_mounts = 1;
	expect_invalid(t, "dir_mounts[0]: path is not absolute \"relative\"");
	t = b; t.disk_mounts = dk; t.ndisk_mounts = 1;
	expect_invalid(t, "disk_mounts[0]: id is empty");
	t = b; t.hostname = "";
	expect_invalid(t, "bootstrap: hostname: is empty");
	t = b; t.has_network = true; t.network.interface = "eth0"; t.network.has_ipv4 = true;
	t.network.ipv4.prefix_len = 33;
	expect_invalid(t, "prefix_len");
	t.network.ipv4.prefix_len = 32;
	t.network.has_ipv6 = true;
	t.network.ipv6.prefix_len = 129;
	expect_invalid(t, "prefix_len");
	t = b; t.has_handoff_init = true; t.handoff_init.cmd = "init";
	expect_invalid(t, "handoff_init.cmd");
	t.handoff_init.cmd = "auto";
	CHECK(bootstrap_validate(&t, &err) == 0);
	t.handoff_init.cwd = "x";
	expect_invalid(t, "handoff_init.cwd");
	t = b; t.has_block_root = true; t.block_root.kind = BLOCK_ROOT_OCI_EROFS; t.block_root.lower = "/dev/vda";
	t.block_root.upper.kind = UPPER_DEVICE; t.block_root.upper.device = "/dev/vdb";
	expect_invalid(t, "upper.fstype: is empty");
	t.block_root.upper.fstype = "ext4";
	CHECK(bootstrap_validate(&t, &err) == 0);
	/* a long non-ASCII value is cut on a character boundary */
	{
		char path[128] = "a";

		for (int i = 0; i < 40; i++)
			strcat(path, "\xc3\xa9");
		dm[0].guest_path = path;
		t = b; t.dir_mounts = dm; t.ndir_mounts = 1;
		expect_invalid(t, "not absolute \"a\xc3\xa9");
		CHECK(bootstrap_validate(&t, &err) == -1 && strstr(err.msg, "\xc3\xa9\"") != NULL &&
		      strlen(strstr(err.msg, "\"a")) == 2 + 62 + 1);
	}
	CHECK_EQ_INT(rlimit_lookup("NoFile", true), 7);
	CHECK_EQ_INT(rlimit_lookup("NoFile", false), -1);
	CHECK_EQ_INT(rlimit_lookup("rttime", false), 15);
}

/* ------------------------------------------------------------------ */
/* Kept fuzz findings                                                    */

static void test_fuzz_regressions(void)
{
	char dir[512], path[1024];
	struct dirent *e;
	size_t n, count = 0;
	uint8_t *data;
	DIR *d;

	snprintf(dir, sizeof(dir), "%s/../fuzz-regressions", unit_vectors_dir);
	/* A missing or emptied directory would replay nothing and pass. */
	if (!CHECKF((d = opendir(dir)) != NULL, "cannot open %s: %s", dir, strerror(errno)))
		return;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || !strcmp(e->d_name, "README"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (!CHECKF((data = read_file(path, &n)) != NULL, "cannot read %s", path))
			continue;
		/* each input goes through both targets; a violation aborts */
		fuzz_frames_one(data, n);
		fuzz_payload_one(data, n);
		if (strstr(e->d_name, "payload-skip-")) {
			struct arena a;
			struct msg m;
			struct decode_error err;

			arena_init(&a, 1 << 20);
			CHECK(payload_decode(MSG_EXEC_SIGNAL, 1, (struct slice){ data + 1, n - 1 }, &m, &a, &err) == 0 &&
			      m.u.exec_signal.signal == 15);
			arena_reset(&a);
		}
		free(data);
		count++;
		CHECK(true);
	}
	closedir(d);
	CHECKF(count > 0, "no fuzz regression inputs in %s", dir);
	printf("fuzz regressions replayed: %zu\n", count);
}

void test_protocol(void)
{
	test_encoder();
	test_vectors();
	test_cbor_edges();
	test_bootstrap_validate();
	test_frame_limits();
	test_random_roundtrip();
	test_streams();
	test_fuzz_regressions();
}
