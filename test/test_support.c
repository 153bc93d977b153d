/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_support.c - the agent's small replacements for heavy libc pieces
 * behave like the libc functions they replace: fmt() like snprintf, the
 * userdb lookups like getpwnam/getgrnam/getgrouplist on this machine's
 * /etc/passwd and /etc/group, and the IPv6 text functions like
 * inet_pton/inet_ntop.
 */
#include <arpa/inet.h>
#include <grp.h>
#include <pwd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fmt.h"
#include "initcfg.h"
#include "unit.h"
#include "userdb.h"

#define SAME_AS_SNPRINTF(...) do {                                        \
	char a_[128], b_[128];                                            \
	int ra_ = fmt(a_, sizeof(a_), __VA_ARGS__);                        \
	int rb_ = snprintf(b_, sizeof(b_), __VA_ARGS__);                   \
	CHECK_EQ_INT(ra_, rb_);                                           \
	CHECK_EQ_STR(a_, b_);                                             \
} while (0)

static void test_fmt(void)
{
	char small[4];

	SAME_AS_SNPRINTF("%s/%d", "x", -5);
	SAME_AS_SNPRINTF("%04lld-%02u-%02uT", (long long)7, 3u, 12u);
	SAME_AS_SNPRINTF(".%03u.%06u.%09u", 5u, 7u, 123u);
	SAME_AS_SNPRINTF("%016llx|%x|%o", 0xabcULL, 0u, 01777u);
	SAME_AS_SNPRINTF("%.*s|%.180s|%s", 3, "abcdef", "hi", "");
	SAME_AS_SNPRINTF("%zu %lu %llu", (size_t)9, 10ul, 18446744073709551615ULL);
	SAME_AS_SNPRINTF("%d %i %lld", -2147483647 - 1, 0, (long long)INT64_MIN);
	SAME_AS_SNPRINTF("%5d|%-5d|%05d|%.0d|%c%%", 42, 42, -42, 0, 'z');
	/* Truncation: NUL-terminated, full length returned, like snprintf. */
	CHECK_EQ_INT(fmt(small, sizeof(small), "%s", "abcdef"), 6);
	CHECK_EQ_STR(small, "abc");
	CHECK_EQ_INT(fmt(NULL, 0, "%u", 12345u), 5);
}

static void test_userdb(void)
{
	struct passwd *p;
	struct group *g;
	struct user_entry u;
	uint32_t gid;
	int users = 0;

	setpwent();
	while ((p = getpwent()) && users < 200) {
		gid_t lg[256];
		uint32_t ug[256];
		int ln = 256, un;

		users++;
		CHECKF(userdb_user_by_name(p->pw_name, &u) == 0, "user %s", p->pw_name);
		CHECK_EQ_INT(u.uid, p->pw_uid);
		CHECK_EQ_INT(u.gid, p->pw_gid);
		CHECK_EQ_STR(u.home, p->pw_dir);
		CHECKF(userdb_user_by_uid(p->pw_uid, &u) == 0, "uid %u", p->pw_uid);
		getgrouplist(p->pw_name, p->pw_gid, lg, &ln);
		un = userdb_group_list(p->pw_name, p->pw_gid, ug, 256);
		CHECK_EQ_INT(un, ln);
		for (int i = 0; i < un && i < ln; i++)
			CHECK_EQ_INT(ug[i], lg[i]);
	}
	endpwent();
	CHECK(users > 0);
	setgrent();
	while ((g = getgrent())) {
		CHECKF(userdb_group_by_name(g->gr_name, &gid) == 0, "group %s", g->gr_name);
		CHECK_EQ_INT(gid, g->gr_gid);
	}
	endgrent();
	CHECK(userdb_user_by_name("no-such-user-agentd", &u) < 0);
	CHECK(userdb_user_by_uid(4000000000u, &u) < 0);
	CHECK(userdb_group_by_name("no-such-group-agentd", &gid) < 0);
}

static void test_ipv6_text(void)
{
	static const char *const texts[] = {
		"::", "::1", "1::", "fd42:6d73:62:2a::2", "2001:db8::1:0:0:1",
		"1:2:3:4:5:6:7:8", "::ffff:1.2.3.4", "::1.2.3.4", "1:0:0:2::3",
		"FE80::ABCD", "0:0:0:0:0:0:0:0", "1:2:3:4:5:6:1.2.3.4",
		":", ":::", "1:::2", "1::2::3", "12345::", "1:2:3:4:5:6:7:8:9",
		"1:2:3:4:5:6:7::8", "::1.2.3", "1.2.3.4", "fe80::1%eth0", "1:",
		":1", "::ffff:1.2.3.256", "g::", "", "1:2:3:4:5:6:7:",
	};
	uint8_t a[16], b[16];
	char ours[46], libc[INET6_ADDRSTRLEN];

	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		int lr = inet_pton(AF_INET6, texts[i], b) == 1 ? 0 : -1;
		int r = cfg_parse_ipv6(texts[i], a);

		CHECKF(r == lr, "parse \"%s\": ours %d, libc %d", texts[i], r, lr);
		if (r == 0 && lr == 0)
			CHECK_EQ_MEM(a, 16, b, 16);
	}
	cfg_parse_ipv6("::1.2.3.4", a);
	cfg_format_ipv6(a, ours);
	CHECK_EQ_STR(ours, "::102:304");
	srand(7);
	for (int i = 0; i < 20000; i++) {
		for (int j = 0; j < 16; j++)  /* many zero runs, some mapped */
			a[j] = rand() % 3 ? 0 : (uint8_t)rand();
		/* glibc prints deprecated IPv4-compatible addresses (::a.b.c.d)
		 * as a dotted quad; musl and the reference (Rust) do not. */
		if (!memcmp(a, "\0\0\0\0\0\0\0\0\0\0\0\0", 12))
			a[5] = 1;
		if (i % 7 == 0)
			memcpy(a, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12);
		cfg_format_ipv6(a, ours);
		inet_ntop(AF_INET6, a, libc, sizeof(libc));
#ifdef __GLIBC__
		/* RFC 5952 compresses the FIRST longest zero run, as glibc and
		 * the reference (Rust) do; musl picks the last one on a tie. */
		CHECK_EQ_STR(ours, libc);
#endif
		CHECK(cfg_parse_ipv6(ours, b) == 0 && !memcmp(a, b, 16));
	}
}

void test_support(void)
{
	test_fmt();
	test_userdb();
	test_ipv6_text();
}
