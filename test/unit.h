/* SPDX-License-Identifier: Apache-2.0 */
/*
 * unit.h - the tiny unit-test runner shared by every test_*.c file.
 *
 * API (all checks count one test case and never abort the run):
 *
 *   CHECK(cond)                  pass when cond is true
 *   CHECKF(cond, fmt, ...)       the same, with a printf-style note on failure
 *   CHECK_EQ_INT(a, b)           integers equal (compared as long long)
 *   CHECK_EQ_STR(a, b)           C strings equal (NULL only equals NULL)
 *   CHECK_EQ_MEM(a, an, b, bn)   byte ranges equal in length and content
 *
 * Failures print "file:line: message" on stderr.  unit_pass / unit_fail
 * are the counters; main() in unit.c prints "unit: N passed, M failed"
 * and exits non-zero when M > 0.  unit_vectors_dir is argv[1] (the
 * vectors directory, "test/vectors" by default).
 *
 * Each test file exports one void test_xxx(void) that unit.c calls.
 */
#ifndef AGENTD_UNIT_H
#define AGENTD_UNIT_H

#include <stdbool.h>
#include <stddef.h>

extern unsigned long unit_pass, unit_fail;
extern const char *unit_vectors_dir;

bool unit_check(bool ok, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
bool unit_check_mem(const void *a, size_t an, const void *b, size_t bn,
		    const char *file, int line, const char *what);

#define CHECK(cond) unit_check((cond), __FILE__, __LINE__, "%s", #cond)
#define CHECKF(cond, ...) unit_check((cond), __FILE__, __LINE__, __VA_ARGS__)
#define CHECK_EQ_INT(a, b) unit_check_int((long long)(a), (long long)(b), __FILE__, __LINE__, #a, #b)
#define CHECK_EQ_STR(a, b) unit_check_str((a), (b), __FILE__, __LINE__, #a, #b)
#define CHECK_EQ_MEM(a, an, b, bn) unit_check_mem((a), (an), (b), (bn), __FILE__, __LINE__, #a)

/* Each argument is evaluated once, so CHECK_EQ_INT(f(), 1) calls f once. */
bool unit_check_int(long long a, long long b, const char *file, int line,
		    const char *as, const char *bs);
bool unit_check_str(const char *a, const char *b, const char *file, int line,
		    const char *as, const char *bs);

void test_protocol(void);
void test_initcfg(void);
void test_support(void);

#endif
