/* SPDX-License-Identifier: Apache-2.0 */
/* fmt.h - snprintf for the agent without musl's float/stdio engine. */
#ifndef AGENTD_FMT_H
#define AGENTD_FMT_H

#include <stdarg.h>
#include <stddef.h>

int fmt(char *buf, size_t n, const char *f, ...)
	__attribute__((format(printf, 3, 4)));
int vfmt(char *buf, size_t n, const char *f, va_list ap)
	__attribute__((format(printf, 3, 0)));

#endif
