/* SPDX-License-Identifier: Apache-2.0 */
/*
 * initcfg.h - strict parsers for the MSB_* boot configuration (SPEC 10).
 *
 * Pure functions: no I/O, no allocation.  Every parser copies its input
 * into the result's own bounded text buffer and points into that copy, so
 * the environment strings stay untouched.  On error a parser returns -1
 * and leaves a message ("MSB_TMPFS: invalid tmpfs size '12x'") in err.
 */
#ifndef AGENTD_INITCFG_H
#define AGENTD_INITCFG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CFG_TEXT_MAX    4096  /* longest accepted value; the x86 cmdline is 2 KiB */
#define CFG_ENTRIES_MAX 32    /* volumes or tmpfs entries per variable */
#define CFG_ERR_MAX     200

struct cfg_err {
	char msg[CFG_ERR_MAX];
};

/* MSB_BLOCK_ROOT = DEVICE[,fstype=TYPE] */
struct cfg_block_root {
	char text[CFG_TEXT_MAX];
	const char *device;
	const char *fstype;  /* NULL: probe the types of /proc/filesystems */
};

/* MSB_MOUNTS = TAG:PATH[:ro][;...] */
struct cfg_mount {
	const char *tag, *path;
	bool ro;
};
struct cfg_mounts {
	char text[CFG_TEXT_MAX];
	unsigned n;
	struct cfg_mount m[CFG_ENTRIES_MAX];
};

/* MSB_TMPFS = PATH[,size=MiB][,mode=OCTAL][,noexec][;...] */
struct cfg_tmpfs {
	const char *path;
	bool has_size, has_mode, noexec;
	uint32_t size_mib, mode;
};
struct cfg_tmpfs_list {
	char text[CFG_TEXT_MAX];
	unsigned n;
	struct cfg_tmpfs e[CFG_ENTRIES_MAX];
};

/* MSB_NET = iface=NAME,mac=XX:XX:XX:XX:XX:XX[,mtu=N] */
struct cfg_net {
	char iface[16];
	uint8_t mac[6];
	uint16_t mtu;
};

/* MSB_NET_IPV4 / MSB_NET_IPV6 = addr=ADDR/N,gw=ADDR[,dns=ADDR] */
struct cfg_ip {
	int family;  /* AF_INET or AF_INET6 */
	uint8_t addr[16], gw[16], dns[16];
	uint8_t prefix;
	bool has_dns;
};

/* An env value as SPEC 10 counts it: NULL when unset, empty or not UTF-8. */
const char *cfg_value(const char *v);

/* Format the message into err; returns -1 for "return cfg_fail(...)". */
int cfg_fail(struct cfg_err *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

int cfg_parse_block_root(const char *s, struct cfg_block_root *out, struct cfg_err *err);
int cfg_parse_mounts(const char *s, struct cfg_mounts *out, struct cfg_err *err);
int cfg_parse_tmpfs(const char *s, struct cfg_tmpfs_list *out, struct cfg_err *err);
int cfg_parse_net(const char *s, struct cfg_net *out, struct cfg_err *err);
int cfg_parse_ip(const char *s, int family, struct cfg_ip *out, struct cfg_err *err);
/* 0..15 for a hexadecimal digit, else -1. */
int cfg_hex_digit(char c);
/* Textual IPv6 to 16 bytes (0, or -1), and back in RFC 5952 form (46 bytes). */
int cfg_parse_ipv6(const char *s, uint8_t out[16]);
void cfg_format_ipv6(const uint8_t a[16], char *buf);

/* Mode of a tmpfs root (given, else 01777 for /tmp and /var/tmp, else 0755). */
uint32_t cfg_tmpfs_mode(const struct cfg_tmpfs *t);
/* mount(2) data: "size=<bytes>,mode=<octal>" or "mode=<octal>"; -1 if too small. */
int cfg_tmpfs_data(const struct cfg_tmpfs *t, char *buf, size_t n);

/*
 * MSB_HOSTNAME (SPEC 10.5) is a host name as RFC 1123 defines it: labels of
 * letters, digits and '-' (not first or last), 1-63 bytes each, separated by
 * dots, at most 64 bytes in all (sethostname's limit).  It goes into
 * /etc/hosts, so nothing else may pass (whitespace, '#', newlines).
 */
int cfg_check_hostname(const char *name, struct cfg_err *err);

/* /etc/hosts content (SPEC 10.5); name may be NULL.  Length or -1. */
int cfg_hosts(const char *name, char *buf, size_t n);
/* /etc/resolv.conf content from the configured dns servers (either may be
 * NULL); 0 when neither has dns, else the length, -1 if buf is too small. */
int cfg_resolv(const struct cfg_ip *v4, const struct cfg_ip *v6, char *buf, size_t n);

/*
 * /etc/profile (SPEC 10.10): given the current content, the number of
 * bytes to append into add (at most CFG_PROFILE_ADD_MAX): 0 when both
 * marker lines are already there.
 */
#define CFG_PROFILE_ADD_MAX 192
size_t cfg_profile_append(const char *cur, size_t len, char add[CFG_PROFILE_ADD_MAX]);

/* Is word (e.g. "agentd.runtime=none") one of the words of a kernel cmdline? */
bool cfg_cmdline_has(const char *cmdline, const char *word);

#endif
