/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_common.h - the properties the protocol fuzzers check, shared with
 * the unit tests so that every kept crasher is replayed by `make unit`.
 * A violated property aborts (which libFuzzer reports as a crash).
 */
#ifndef AGENTD_FUZZ_COMMON_H
#define AGENTD_FUZZ_COMMON_H

#include "protocol.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fuzz_violated(const char *what)
{
	fprintf(stderr, "property violated: %s\n", what);
	abort();
}

static uint8_t *fuzz_encode(const struct msg *m, size_t *len)
{
	struct cbor_out count = { 0 }, o;

	payload_encode(&count, m);
	o = (struct cbor_out){ malloc(count.len + 1), 0, count.len, false };
	if (!o.buf)
		fuzz_violated("out of memory");
	payload_encode(&o, m);
	if (o.overflow || o.len != count.len)
		fuzz_violated("counting and writing encoders disagree");
	*len = o.len;
	return o.buf;
}

/*
 * Decode p as a payload of type t; when it decodes, its canonical encoding
 * must decode again and re-encode to the very same bytes, and a frame of
 * it must be encodable unless it is too large.
 */
static void fuzz_payload_roundtrip(enum msg_type t, uint8_t gen, const uint8_t *p, size_t n)
{
	struct slice s = { p, n };
	struct decode_error err;
	struct arena a;
	struct msg m, m2;
	uint8_t *e1, *e2;
	size_t n1, n2;

	arena_init(&a, 1 << 24);
	if (payload_decode(t, gen, s, &m, &a, &err)) {
		if (!err.msg[0])
			fuzz_violated("decode failed without a message");
		arena_reset(&a);
		return;
	}
	if (t == MSG_BOOTSTRAP && bootstrap_validate(&m.u.bootstrap, &err) && !err.msg[0])
		fuzz_violated("validation failed without a message");
	e1 = fuzz_encode(&m, &n1);
	if (payload_decode(t, gen, (struct slice){ e1, n1 }, &m2, &a, &err))
		fuzz_violated("canonical encoding does not decode");
	e2 = fuzz_encode(&m2, &n2);
	if (n1 != n2 || memcmp(e1, e2, n1))
		fuzz_violated("re-encoding is not stable");
	free(e1);
	free(e2);
	arena_reset(&a);
}

/* First byte: type and generation; the rest: the payload. */
static void fuzz_payload_one(const uint8_t *data, size_t n)
{
	if (!n)
		return;
	fuzz_payload_roundtrip((enum msg_type)(data[0] % MSG_TYPE_COUNT),
			       (data[0] / MSG_TYPE_COUNT) & 1 ? PROTO_GEN_CURRENT : PROTO_GEN_SEED,
			       data + 1, n - 1);
}

struct fuzz_trace {
	uint64_t hash;
	size_t frames;
	bool too_large;
};

static void fuzz_trace_add(struct fuzz_trace *t, uint64_t v)
{
	t->hash = (t->hash ^ v) * 0x100000001b3ull;
}

/* Drains every frame buffered in r, decoding each one fully. */
static void fuzz_drain(struct frame_reader *r, struct fuzz_trace *t, bool decode)
{
	struct envelope env;
	struct decode_error err;
	struct arena a;
	struct frame f;
	enum frame_status st;

	arena_init(&a, 1 << 24);
	while ((st = frame_next(r, &f)) != FRAME_NEED_MORE) {
		if (r->start > r->len || r->len > r->cap)
			fuzz_violated("frame reader bounds");
		fuzz_trace_add(t, st);
		t->frames++;
		if (st == FRAME_TOO_LARGE)
			t->too_large = true;
		if (st != FRAME_OK)
			continue;
		fuzz_trace_add(t, f.id);
		fuzz_trace_add(t, f.flags);
		for (size_t i = 0; i < f.body_len; i++)
			fuzz_trace_add(t, f.body[i]);
		if (decode && !envelope_decode_arena(f.body, f.body_len, &env, &a, &err) &&
		    env.type != MSG_UNKNOWN)
			fuzz_payload_roundtrip(env.type, env.v, env.payload.p, env.payload.n);
		arena_reset(&a);
	}
}

/*
 * Feed data to a frame reader in pieces whose sizes come from the data
 * itself, decode every frame, and compare the frame sequence with a
 * one-shot feed (they must agree unless a too-large frame discarded a
 * split-dependent amount of input).
 */
static void fuzz_frames_one(const uint8_t *data, size_t n)
{
	/* kept across runs: a fresh 4 MiB buffer per input would dominate */
	static struct frame_reader r1, r2;
	struct fuzz_trace t1 = { 0 }, t2 = { 0 };
	uint32_t seed = n ? data[0] * 2654435761u : 1;
	size_t pos = 0, step;

	if ((!r1.buf && frame_reader_init(&r1)) || (!r2.buf && frame_reader_init(&r2)))
		fuzz_violated("out of memory");
	r1.start = r1.len = r2.start = r2.len = 0;
	while (pos < n) {
		seed = seed * 1103515245u + 12345u;
		step = 1 + (seed >> 16) % (seed & 0x100 ? 7 : 300);
		if (step > n - pos)
			step = n - pos;
		if (frame_reader_feed(&r1, data + pos, step) != step)
			fuzz_violated("reader refused input below its bound");
		pos += step;
		fuzz_drain(&r1, &t1, true);
	}
	if (frame_reader_feed(&r2, data, n) != n)
		fuzz_violated("reader refused input below its bound");
	fuzz_drain(&r2, &t2, false);
	if (!t1.too_large && !t2.too_large && (t1.hash != t2.hash || t1.frames != t2.frames))
		fuzz_violated("split feeding changed the frames");
}

#endif
