/* SPDX-License-Identifier: Apache-2.0 */
/*
 * initcfg.c - strict parsers for the MSB_* boot configuration (SPEC 10).
 *
 * Each parser copies its input into a bounded buffer of the result, cuts
 * it into NUL-terminated fields there, and validates every field.  No
 * I/O, no allocation: the same code runs under the unit tests and the
 * fuzzer.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "fmt.h"
#include "initcfg.h"

int cfg_fail(struct cfg_err *err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfmt(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	return -1;
}

static int copy_text(char *dst, const char *s, const char *var, struct cfg_err *err)
{
	size_t n = strlen(s);

	if (n >= CFG_TEXT_MAX)
		return cfg_fail(err, "%s: value longer than %d bytes", var, CFG_TEXT_MAX - 1);
	memcpy(dst, s, n + 1);
	return 0;
}

/* Cut *p at the next sep: returns the field, advances *p (NULL after the last). */
static char *next_field(char **p, char sep)
{
	char *f = *p, *e = strchr(f, sep);

	if (e) {
		*e = '\0';
		*p = e + 1;
	} else {
		*p = NULL;
	}
	return f;
}

static bool has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/*
 * The reference's integer parser: one optional leading '+', then at least
 * one digit of the base and nothing else; the value must not exceed max.
 */
static int parse_uint(const char *s, unsigned base, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	if (*s == '+')
		s++;
	if (!*s)
		return -1;
	for (; *s; s++) {
		unsigned d;

		if (*s >= '0' && *s <= '9')
			d = (unsigned)(*s - '0');
		else if (*s >= 'a' && *s <= 'f')
			d = (unsigned)(*s - 'a' + 10);
		else if (*s >= 'A' && *s <= 'F')
			d = (unsigned)(*s - 'A' + 10);
		else
			return -1;
		if (d >= base || v > (max - d) / base)
			return -1;
		v = v * base + d;
	}
	*out = v;
	return 0;
}

/* Strictly valid UTF-8: no overlong forms, no surrogates, <= U+10FFFF. */
static bool utf8_valid(const unsigned char *s)
{
	while (*s) {
		unsigned c = *s, n, cp;

		if (c < 0x80) {
			s++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			n = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		for (unsigned i = 1; i <= n; i++) {
			if ((s[i] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (s[i] & 0x3f);
		}
		if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
		    (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
			return false;
		s += n + 1;
	}
	return true;
}

const char *cfg_value(const char *v)
{
	if (!v || !*v || !utf8_valid((const unsigned char *)v))
		return NULL;
	return v;
}

/* ---- MSB_BLOCK_ROOT ---- */

int cfg_parse_block_root(const char *s, struct cfg_block_root *out, struct cfg_err *err)
{
	char *p = out->text, *opt;

	if (copy_text(out->text, s, "MSB_BLOCK_ROOT", err))
		return -1;
	out->fstype = NULL;
	out->device = next_field(&p, ',');
	if (!*out->device)
		return cfg_fail(err, "MSB_BLOCK_ROOT: empty device path");
	while (p) {
		opt = next_field(&p, ',');
		if (!has_prefix(opt, "fstype="))
			return cfg_fail(err, "MSB_BLOCK_ROOT: unknown MSB_BLOCK_ROOT option '%.40s'", opt);
		if (!opt[7])
			return cfg_fail(err, "MSB_BLOCK_ROOT: empty fstype value");
		out->fstype = opt + 7;
	}
	return 0;
}

/* ---- MSB_MOUNTS ---- */

static int parse_mount(char *entry, struct cfg_mount *m, struct cfg_err *err)
{
	char *parts[3], *p = entry;
	unsigned n = 0;

	/* Count every part, keep the first three. */
	while (p) {
		char *f = next_field(&p, ':');

		if (n < 3)
			parts[n] = f;
		n++;
	}
	if (n < 2)
		return cfg_fail(err, "MSB_MOUNTS: entry must be tag:path[:ro]: '%.40s'", entry);
	if (n >= 3 && strcmp(parts[2], "ro") != 0)
		return cfg_fail(err, "MSB_MOUNTS: unknown flag '%.40s'", parts[2]);
	if (n > 3)
		return cfg_fail(err, "MSB_MOUNTS: too many parts in '%.40s'", entry);
	if (!*parts[0])
		return cfg_fail(err, "MSB_MOUNTS: empty tag");
	if (parts[1][0] != '/')
		return cfg_fail(err, "MSB_MOUNTS: guest path must be absolute: '%.40s'", parts[1]);
	m->tag = parts[0];
	m->path = parts[1];
	m->ro = n == 3;
	return 0;
}

/*
 * The entries of a ';'-separated list, empty ones skipped (SPEC 10.4,
 * 10.6): at most CFG_ENTRIES_MAX.  Returns their count, or -1.
 */
static int split_entries(char *text, const char *var, char **entries,
			 struct cfg_err *err)
{
	int n = 0;

	while (text) {
		char *entry = next_field(&text, ';');

		if (!*entry)
			continue;
		if (n == CFG_ENTRIES_MAX)
			return cfg_fail(err, "%s: more than %d entries", var, CFG_ENTRIES_MAX);
		entries[n++] = entry;
	}
	return n;
}

int cfg_parse_mounts(const char *s, struct cfg_mounts *out, struct cfg_err *err)
{
	char *entries[CFG_ENTRIES_MAX];
	int n;

	out->n = 0;
	if (copy_text(out->text, s, "MSB_MOUNTS", err) ||
	    (n = split_entries(out->text, "MSB_MOUNTS", entries, err)) < 0)
		return -1;
	for (; (int)out->n < n; out->n++)
		if (parse_mount(entries[out->n], &out->m[out->n], err))
			return -1;
	return 0;
}

/* ---- MSB_TMPFS ---- */

static int parse_tmpfs_option(char *opt, struct cfg_tmpfs *t, struct cfg_err *err)
{
	uint64_t v;

	if (has_prefix(opt, "size=")) {
		if (parse_uint(opt + 5, 10, UINT32_MAX, &v))
			return cfg_fail(err, "MSB_TMPFS: invalid tmpfs size '%.40s'", opt + 5);
		t->has_size = true;
		t->size_mib = (uint32_t)v;
	} else if (has_prefix(opt, "mode=")) {
		if (parse_uint(opt + 5, 8, UINT32_MAX, &v))
			return cfg_fail(err, "MSB_TMPFS: invalid octal tmpfs mode '%.40s'", opt + 5);
		t->has_mode = true;
		t->mode = (uint32_t)v;
	} else if (strcmp(opt, "noexec") == 0) {
		t->noexec = true;
	} else {
		return cfg_fail(err, "MSB_TMPFS: unknown tmpfs option '%.40s'", opt);
	}
	return 0;
}

static int parse_tmpfs_entry(char *entry, struct cfg_tmpfs *t, struct cfg_err *err)
{
	char *p = entry;

	memset(t, 0, sizeof(*t));
	t->path = next_field(&p, ',');
	if (!*t->path)
		return cfg_fail(err, "MSB_TMPFS: empty tmpfs path");
	while (p)
		if (parse_tmpfs_option(next_field(&p, ','), t, err))
			return -1;
	return 0;
}

int cfg_parse_tmpfs(const char *s, struct cfg_tmpfs_list *out, struct cfg_err *err)
{
	char *entries[CFG_ENTRIES_MAX];
	int n;

	out->n = 0;
	if (copy_text(out->text, s, "MSB_TMPFS", err) ||
	    (n = split_entries(out->text, "MSB_TMPFS", entries, err)) < 0)
		return -1;
	for (; (int)out->n < n; out->n++)
		if (parse_tmpfs_entry(entries[out->n], &out->e[out->n], err))
			return -1;
	return 0;
}

uint32_t cfg_tmpfs_mode(const struct cfg_tmpfs *t)
{
	if (t->has_mode)
		return t->mode;
	if (strcmp(t->path, "/tmp") == 0 || strcmp(t->path, "/var/tmp") == 0)
		return 01777;
	return 0755;
}

int cfg_tmpfs_data(const struct cfg_tmpfs *t, char *buf, size_t n)
{
	int r;

	if (t->has_size)
		r = fmt(buf, n, "size=%llu,mode=%o",
			     (unsigned long long)t->size_mib * 1048576ull, cfg_tmpfs_mode(t));
	else
		r = fmt(buf, n, "mode=%o", cfg_tmpfs_mode(t));
	return r < 0 || (size_t)r >= n ? -1 : r;
}

/* ---- MSB_NET ---- */

static int parse_mac(const char *s, uint8_t mac[6])
{
	char tmp[32], *p = tmp;
	unsigned i = 0;
	uint64_t v;

	if (strlen(s) >= sizeof(tmp))
		return -1;
	strcpy(tmp, s);
	while (p) {
		if (i == 6 || parse_uint(next_field(&p, ':'), 16, 255, &v))
			return -1;
		mac[i++] = (uint8_t)v;
	}
	return i == 6 ? 0 : -1;
}

/* Split "key=value" at the first '='; NULL value when there is none. */
static char *split_kv(char *kv)
{
	char *eq = strchr(kv, '=');

	if (!eq)
		return NULL;
	*eq = '\0';
	return eq + 1;
}

static int net_key(char *key, char *val, struct cfg_net *out, unsigned *seen,
		   struct cfg_err *err)
{
	uint64_t v;

	if (val && strcmp(key, "iface") == 0) {
		if (!*val || strlen(val) >= sizeof(out->iface))
			return cfg_fail(err, "MSB_NET: iface must be 1 to 15 bytes: '%.40s'", val);
		strcpy(out->iface, val);
		*seen |= 1;
	} else if (val && strcmp(key, "mac") == 0) {
		if (parse_mac(val, out->mac))
			return cfg_fail(err, "MSB_NET: invalid mac '%.40s'", val);
		*seen |= 2;
	} else if (val && strcmp(key, "mtu") == 0) {
		if (parse_uint(val, 10, UINT16_MAX, &v))
			return cfg_fail(err, "MSB_NET: invalid mtu '%.40s'", val);
		out->mtu = (uint16_t)v;
	} else {
		return cfg_fail(err, "MSB_NET: unknown key '%.40s'", key);
	}
	return 0;
}

int cfg_parse_net(const char *s, struct cfg_net *out, struct cfg_err *err)
{
	char text[CFG_TEXT_MAX], *p = text;
	unsigned seen = 0;

	memset(out, 0, sizeof(*out));
	out->mtu = 1500;
	if (copy_text(text, s, "MSB_NET", err))
		return -1;
	while (p) {
		char *key = next_field(&p, ',');

		if (net_key(key, split_kv(key), out, &seen, err))
			return -1;
	}
	if (!(seen & 1))
		return cfg_fail(err, "MSB_NET: missing iface=");
	if (!(seen & 2))
		return cfg_fail(err, "MSB_NET: missing mac=");
	return 0;
}

/* ---- MSB_NET_IPV4 / MSB_NET_IPV6 ---- */

/* Strict dotted quad: four decimal octets 0..255, no leading zeros. */
static int parse_ipv4(const char *s, uint8_t out[4])
{
	for (unsigned i = 0; i < 4; i++) {
		unsigned v = 0, nd = 0;

		for (; *s >= '0' && *s <= '9'; s++, nd++) {
			if (nd == 3 || (nd == 1 && v == 0))
				return -1;
			v = v * 10 + (unsigned)(*s - '0');
		}
		if (nd == 0 || v > 255)
			return -1;
		out[i] = (uint8_t)v;
		if (*s != (i == 3 ? '\0' : '.'))
			return -1;
		s++;
	}
	return 0;
}

int cfg_hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/*
 * Textual IPv6 (RFC 4291 2.2): groups of 1-4 hex digits, at most one "::"
 * standing for one or more zero groups, optionally a dotted quad as the
 * last 32 bits.  Written here because musl's inet_pton/inet_ntop drag the
 * printf engine into the static agent.
 */
int cfg_parse_ipv6(const char *s, uint8_t out[16])
{
	uint8_t b[16];
	int n = 0, gap = -1;

	if (s[0] == ':') {
		if (s[1] != ':')
			return -1;
		gap = 0;
		s += 2;
	}
	while (*s) {
		const char *start = s;
		unsigned v = 0, nd = 0;

		for (; cfg_hex_digit(*s) >= 0; s++, nd++) {
			if (nd == 4)
				return -1;
			v = v * 16 + (unsigned)cfg_hex_digit(*s);
		}
		if (*s == '.') {  /* embedded IPv4: the last 32 bits */
			if (n > 12 || parse_ipv4(start, b + n))
				return -1;
			n += 4;
			break;
		}
		if (nd == 0 || n > 14)
			return -1;
		b[n++] = (uint8_t)(v >> 8);
		b[n++] = (uint8_t)v;
		if (!*s)
			break;
		if (*s++ != ':' || !*s)
			return -1;
		if (*s == ':') {
			if (gap >= 0)
				return -1;
			gap = n;
			s++;
		}
	}
	if (gap < 0 ? n != 16 : n > 14)
		return -1;
	memset(out, 0, 16);
	if (gap < 0)
		gap = n;
	memcpy(out, b, (size_t)gap);
	memcpy(out + 16 - (n - gap), b + gap, (size_t)(n - gap));
	return 0;
}

/* RFC 5952 text, as inet_ntop writes it (buf holds 46 bytes). */
void cfg_format_ipv6(const uint8_t a[16], char *buf)
{
	static const uint8_t mapped[12] = { [10] = 0xff, [11] = 0xff };
	int best = -1, bestlen = 1, i, len = 0;
	unsigned g[8];

	if (!memcmp(a, mapped, 12)) {
		fmt(buf, 46, "::ffff:%u.%u.%u.%u", a[12], a[13], a[14], a[15]);
		return;
	}
	for (i = 0; i < 8; i++)
		g[i] = (unsigned)a[2 * i] << 8 | a[2 * i + 1];
	for (i = 0; i < 8;) {  /* the first longest run of >= 2 zero groups */
		int j = i;

		while (j < 8 && !g[j])
			j++;
		if (j - i > bestlen) {
			best = i;
			bestlen = j - i;
		}
		i = j > i ? j : i + 1;
	}
	for (i = 0; i < 8; i++) {
		if (i == best) {
			len += fmt(buf + len, 46 - (size_t)len, "::");
			i += bestlen - 1;
			continue;
		}
		if (i && i != best + bestlen)
			buf[len++] = ':';
		len += fmt(buf + len, 46 - (size_t)len, "%x", g[i]);
	}
	buf[len] = 0;
}

static int parse_addr(const char *s, int family, uint8_t out[16])
{
	memset(out, 0, 16);
	if (family == AF_INET)
		return parse_ipv4(s, out);
	return cfg_parse_ipv6(s, out);
}

static int ip_addr_prefix(char *val, struct cfg_ip *out, const char *var,
			  struct cfg_err *err)
{
	char *slash = strrchr(val, '/');
	uint64_t prefix;
	uint64_t max = out->family == AF_INET ? 32 : 128;

	if (!slash)
		return cfg_fail(err, "%s: addr must be ADDR/PREFIX: '%.60s'", var, val);
	*slash = '\0';
	if (parse_addr(val, out->family, out->addr))
		return cfg_fail(err, "%s: invalid address '%.60s'", var, val);
	if (parse_uint(slash + 1, 10, max, &prefix))
		return cfg_fail(err, "%s: invalid prefix length '%.20s'", var, slash + 1);
	out->prefix = (uint8_t)prefix;
	return 0;
}

static int ip_key(char *key, char *val, struct cfg_ip *out, unsigned *seen,
		  const char *var, struct cfg_err *err)
{
	if (val && strcmp(key, "addr") == 0) {
		if (ip_addr_prefix(val, out, var, err))
			return -1;
		*seen |= 1;
	} else if (val && strcmp(key, "gw") == 0) {
		if (parse_addr(val, out->family, out->gw))
			return cfg_fail(err, "%s: invalid gw '%.60s'", var, val);
		*seen |= 2;
	} else if (val && strcmp(key, "dns") == 0) {
		if (parse_addr(val, out->family, out->dns))
			return cfg_fail(err, "%s: invalid dns '%.60s'", var, val);
		out->has_dns = true;
	} else {
		return cfg_fail(err, "%s: unknown key '%.40s'", var, key);
	}
	return 0;
}

int cfg_parse_ip(const char *s, int family, struct cfg_ip *out, struct cfg_err *err)
{
	const char *var = family == AF_INET ? "MSB_NET_IPV4" : "MSB_NET_IPV6";
	char text[CFG_TEXT_MAX], *p = text;
	unsigned seen = 0;

	memset(out, 0, sizeof(*out));
	out->family = family;
	if (family != AF_INET && family != AF_INET6)
		return cfg_fail(err, "bad address family %d", family);
	if (copy_text(text, s, var, err))
		return -1;
	while (p) {
		char *key = next_field(&p, ',');

		if (ip_key(key, split_kv(key), out, &seen, var, err))
			return -1;
	}
	if (!(seen & 1))
		return cfg_fail(err, "%s: missing addr=", var);
	if (!(seen & 2))
		return cfg_fail(err, "%s: missing gw=", var);
	return 0;
}

/* ---- generated files ---- */

static bool host_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-';
}

int cfg_check_hostname(const char *name, struct cfg_err *err)
{
	size_t len = strlen(name), label = 0;

	if (len == 0 || len > 64)
		return cfg_fail(err, "MSB_HOSTNAME: must be 1-64 bytes long");
	for (size_t i = 0; i <= len; i++) {
		char c = name[i];

		if (c == '.' || c == '\0') {
			if (label == 0 || label > 63 || name[i - 1] == '-')
				return cfg_fail(err, "MSB_HOSTNAME: not an RFC 1123 host name "
						"(empty, overlong or '-'-ended label)");
			label = 0;
		} else if (!host_char(c) || (label == 0 && c == '-')) {
			return cfg_fail(err, "MSB_HOSTNAME: not an RFC 1123 host name "
					"(letters, digits, '-' and '.' only)");
		} else {
			label++;
		}
	}
	return 0;
}

int cfg_hosts(const char *name, char *buf, size_t n)
{
	const char *sp = name ? " " : "", *nm = name ? name : "";
	int r = fmt(buf, n,
			 "127.0.0.1\tlocalhost%s%s\n"
			 "::1\tlocalhost ip6-localhost ip6-loopback%s%s\n"
			 "fe00::\tip6-localnet\n"
			 "ff00::\tip6-mcastprefix\n"
			 "ff02::1\tip6-allnodes\n"
			 "ff02::2\tip6-allrouters\n", sp, nm, sp, nm);

	return r < 0 || (size_t)r >= n ? -1 : r;
}

int cfg_resolv(const struct cfg_ip *v4, const struct cfg_ip *v6, char *buf, size_t n)
{
	const struct cfg_ip *ips[2] = { v4, v6 };
	size_t len = 0;

	for (unsigned i = 0; i < 2; i++) {
		char a[46];
		int r;

		if (!ips[i] || !ips[i]->has_dns)
			continue;
		if (ips[i]->family == AF_INET6)
			cfg_format_ipv6(ips[i]->dns, a);
		else
			fmt(a, sizeof(a), "%u.%u.%u.%u", ips[i]->dns[0],
			    ips[i]->dns[1], ips[i]->dns[2], ips[i]->dns[3]);
		r = fmt(buf + len, n - len, "nameserver %s\n", a);
		if (r < 0 || (size_t)r >= n - len)
			return -1;
		len += (size_t)r;
	}
	return (int)len;
}

static const char profile_begin[] = "# >>> microsandbox scripts path >>>";
static const char profile_end[] = "# <<< microsandbox scripts path <<<";
static const char profile_block[] =
	"# >>> microsandbox scripts path >>>\n"
	"case \":$PATH:\" in\n"
	"  *:/.msb/scripts:*) ;;\n"
	"  *) export PATH=\"/.msb/scripts:$PATH\" ;;\n"
	"esac\n"
	"# <<< microsandbox scripts path <<<\n";

size_t cfg_profile_append(const char *cur, size_t len, char add[CFG_PROFILE_ADD_MAX])
{
	size_t n = 0;

	_Static_assert(sizeof(profile_block) < CFG_PROFILE_ADD_MAX, "profile block fits");
	if (memmem(cur, len, profile_begin, sizeof(profile_begin) - 1) &&
	    memmem(cur, len, profile_end, sizeof(profile_end) - 1))
		return 0;
	if (len && cur[len - 1] != '\n')
		add[n++] = '\n';
	memcpy(add + n, profile_block, sizeof(profile_block) - 1);
	return n + sizeof(profile_block) - 1;
}

bool cfg_cmdline_has(const char *cmdline, const char *word)
{
	size_t wl = strlen(word);
	const char *p = cmdline;

	while (*p) {
		size_t l;

		while (*p == ' ' || *p == '\t' || *p == '\n')
			p++;
		l = strcspn(p, " \t\n");
		if (l == wl && l && memcmp(p, word, l) == 0)
			return true;
		p += l;
	}
	return false;
}
