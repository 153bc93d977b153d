/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_initcfg.c - libFuzzer target for the MSB_* parsers (initcfg.c).
 * The first byte picks the parser, the rest is the value.  Besides "no
 * crash", it checks what every successful parse promises.
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "initcfg.h"

static void check(int cond)
{
	if (!cond)
		abort();
}

static void check_tmpfs(const struct cfg_tmpfs_list *t)
{
	char data[64];

	check(t->n <= CFG_ENTRIES_MAX);
	for (unsigned i = 0; i < t->n; i++) {
		check(t->e[i].path[0] != '\0');
		check(cfg_tmpfs_data(&t->e[i], data, sizeof(data)) > 0);
	}
}

static void check_mounts(const struct cfg_mounts *m)
{
	check(m->n <= CFG_ENTRIES_MAX);
	for (unsigned i = 0; i < m->n; i++)
		check(m->m[i].tag[0] && m->m[i].path[0] == '/' && !strchr(m->m[i].path, ':'));
}

static void run(unsigned which, const char *s)
{
	static struct cfg_block_root br;
	static struct cfg_mounts m;
	static struct cfg_tmpfs_list t;
	struct cfg_net n;
	struct cfg_ip ip;
	struct cfg_err err;
	char buf[4096], add[CFG_PROFILE_ADD_MAX];

	switch (which % 8) {
	case 0:
		if (!cfg_parse_block_root(s, &br, &err))
			check(br.device[0] && (!br.fstype || br.fstype[0]));
		break;
	case 1:
		if (!cfg_parse_mounts(s, &m, &err))
			check_mounts(&m);
		break;
	case 2:
		if (!cfg_parse_tmpfs(s, &t, &err))
			check_tmpfs(&t);
		break;
	case 3:
		if (!cfg_parse_net(s, &n, &err))
			check(n.iface[0] && strlen(n.iface) < 16);
		break;
	case 4:
	case 5: {
		struct cfg_ip *v4 = which % 8 == 4 ? &ip : NULL;

		if (!cfg_parse_ip(s, which % 8 == 4 ? AF_INET : AF_INET6, &ip, &err)) {
			check(ip.prefix <= (v4 ? 32 : 128));
			check(cfg_resolv(v4, v4 ? NULL : &ip, buf, sizeof(buf)) >= 0);
		}
		break;
	}
	case 6:
		check(cfg_hosts(cfg_value(s), buf, sizeof(buf)) > 0 ||
		      2 * strlen(s) + 160 > sizeof(buf));
		break;
	default: {
		size_t k = cfg_profile_append(s, strlen(s), add);

		check(k < CFG_PROFILE_ADD_MAX);
		if (k) {
			/* Appending once makes the next call a no-op. */
			char *all = malloc(strlen(s) + k);

			check(all != NULL);
			memcpy(all, s, strlen(s));
			memcpy(all + strlen(s), add, k);
			check(cfg_profile_append(all, strlen(s) + k, add) == 0);
			free(all);
		}
		check(!cfg_cmdline_has(s, ""));
		break;
	}
	}
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	char *s;

	if (size == 0 || size > 8192)
		return 0;
	s = malloc(size);
	if (!s)
		return 0;
	memcpy(s, data + 1, size - 1);
	s[size - 1] = '\0';
	run(data[0], s);
	free(s);
	return 0;
}
