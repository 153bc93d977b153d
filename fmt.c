/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fmt.c - a small snprintf.  musl's printf engine carries a floating-point
 * formatter and the stdio machinery: about 10 KB of a static agent that
 * never prints a float.  This covers what agentd formats: %d %i %u %x %o
 * %c %s %% with the '0' and '-' flags, a width, a precision (.N or .*) and
 * the hh h l ll z j t length modifiers.  Output is always NUL-terminated
 * when n > 0 and the return value is the length the full text would have,
 * exactly like snprintf.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "fmt.h"

struct out {
	char *buf;
	size_t cap, len;
};

static void put(struct out *o, char c)
{
	if (o->len + 1 < o->cap)
		o->buf[o->len] = c;
	o->len++;
}

static void pad(struct out *o, char c, int n)
{
	while (n-- > 0)
		put(o, c);
}

/* Emit digits (already reversed in tmp) with sign, zero padding, width. */
static void put_number(struct out *o, uintmax_t v, unsigned base, int neg,
		       int width, int prec, int zero, int left)
{
	char tmp[24];
	int nd = 0, len;

	do {
		tmp[nd++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (prec == 0 && nd == 1 && tmp[0] == '0')
		nd = 0;
	len = (prec > nd ? prec : nd) + neg;
	if (!left && !(zero && prec < 0))
		pad(o, ' ', width - len);
	if (neg)
		put(o, '-');
	if (!left && zero && prec < 0)
		pad(o, '0', width - len);
	pad(o, '0', prec - nd);
	while (nd)
		put(o, tmp[--nd]);
	if (left)
		pad(o, ' ', width - len);
}

static void put_string(struct out *o, const char *s, int width, int prec,
		       int left)
{
	int n = 0;

	if (!s)
		s = "(null)";
	while ((prec < 0 || n < prec) && s[n])
		n++;
	if (!left)
		pad(o, ' ', width - n);
	for (int i = 0; i < n; i++)
		put(o, s[i]);
	if (left)
		pad(o, ' ', width - n);
}

static int read_int(const char **f)
{
	int v = 0;

	while (**f >= '0' && **f <= '9')
		v = v * 10 + (*(*f)++ - '0');
	return v;
}

int vfmt(char *buf, size_t n, const char *f, va_list ap)
{
	struct out o = { buf, n, 0 };

	for (; *f; f++) {
		int zero = 0, left = 0, width = 0, prec = -1, lng = 0;
		uintmax_t u;
		intmax_t s;

		if (*f != '%') {
			put(&o, *f);
			continue;
		}
		for (f++; *f == '0' || *f == '-'; f++)
			*f == '0' ? (zero = 1) : (left = 1);
		width = read_int(&f);
		if (*f == '.') {
			f++;
			if (*f == '*') {
				prec = va_arg(ap, int);
				f++;
			} else {
				prec = read_int(&f);
			}
		}
		/* lng: 0 int, 1 long, 2 long long, 3 size_t, 4 intmax_t */
		for (;; f++) {
			if (*f == 'l')
				lng++;
			else if (*f == 'z' || *f == 't')
				lng = 3;
			else if (*f == 'j')
				lng = 4;
			else if (*f != 'h')
				break;
		}
		switch (*f) {
		case 'd':
		case 'i':
			s = lng == 0 ? va_arg(ap, int) :
			    lng == 1 ? va_arg(ap, long) :
			    lng == 2 ? va_arg(ap, long long) :
			    lng == 3 ? (intmax_t)va_arg(ap, ptrdiff_t) :
				       va_arg(ap, intmax_t);
			u = s < 0 ? -(uintmax_t)s : (uintmax_t)s;
			put_number(&o, u, 10, s < 0, width, prec, zero, left);
			break;
		case 'u':
		case 'x':
		case 'o':
			u = lng == 0 ? va_arg(ap, unsigned) :
			    lng == 1 ? va_arg(ap, unsigned long) :
			    lng == 2 ? va_arg(ap, unsigned long long) :
			    lng == 3 ? va_arg(ap, size_t) :
				       va_arg(ap, uintmax_t);
			put_number(&o, u, *f == 'u' ? 10 : *f == 'x' ? 16 : 8,
				   0, width, prec, zero, left);
			break;
		case 'c':
			put(&o, (char)va_arg(ap, int));
			break;
		case 's':
			put_string(&o, va_arg(ap, const char *), width, prec, left);
			break;
		case '%':
			put(&o, '%');
			break;
		default:  /* unsupported conversion: show it rather than guess */
			put(&o, '%');
			if (!*f)
				f--;
			else
				put(&o, *f);
		}
	}
	if (n)
		buf[o.len < n ? o.len : n - 1] = 0;
	return (int)o.len;
}

int fmt(char *buf, size_t n, const char *f, ...)
{
	va_list ap;
	int r;

	va_start(ap, f);
	r = vfmt(buf, n, f, ap);
	va_end(ap);
	return r;
}
