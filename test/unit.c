/* SPDX-License-Identifier: Apache-2.0 */
/* unit.c - runs every unit-test file and reports the counts (see unit.h). */
#include "unit.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

unsigned long unit_pass, unit_fail;
const char *unit_vectors_dir = "test/vectors";

bool unit_check(bool ok, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		unit_pass++;
		return true;
	}
	unit_fail++;
	fprintf(stderr, "%s:%d: FAIL: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return false;
}

bool unit_check_int(long long a, long long b, const char *file, int line,
		    const char *as, const char *bs)
{
	return unit_check(a == b, file, line, "%s == %s (%lld != %lld)", as, bs, a, b);
}

bool unit_check_str(const char *a, const char *b, const char *file, int line,
		    const char *as, const char *bs)
{
	return unit_check(a == b || (a && b && !strcmp(a, b)), file, line,
			  "%s == %s (\"%s\" != \"%s\")", as, bs, a ? a : "(null)", b ? b : "(null)");
}

bool unit_check_mem(const void *a, size_t an, const void *b, size_t bn,
		    const char *file, int line, const char *what)
{
	size_t i = 0;

	if (an == bn && (!an || !memcmp(a, b, an)))
		return unit_check(true, file, line, "%s", what);
	while (i < an && i < bn && ((const unsigned char *)a)[i] == ((const unsigned char *)b)[i])
		i++;
	return unit_check(false, file, line, "%s: %zu bytes vs %zu, first difference at %zu",
			  what, an, bn, i);
}

int main(int argc, char **argv)
{
	if (argc > 1)
		unit_vectors_dir = argv[1];
	test_protocol();
	test_initcfg();
	test_support();
	printf("unit: %lu passed, %lu failed\n", unit_pass, unit_fail);
	return unit_fail ? 1 : 0;
}
