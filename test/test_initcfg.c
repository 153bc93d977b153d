/* SPDX-License-Identifier: Apache-2.0 */
/* test_initcfg.c - the MSB_* parsers and generated files (SPEC 10). */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "initcfg.h"
#include "unit.h"

static struct cfg_err err;

/* A buffer as a plain pointer, so CHECK_EQ_STR's NULL test is no warning. */
static const char *str(const char *buf)
{
	return buf;
}

/* A parse must fail and its message must contain want. */
#define CHECK_FAILS(call, want) \
	CHECKF((call) < 0 && strstr(err.msg, (want)), "%s: expected error '%s', got '%s'", \
	       #call, (want), (call) < 0 ? err.msg : "(success)")

static void test_block_root(void)
{
	static struct cfg_block_root b;

	CHECK_EQ_INT(cfg_parse_block_root("/dev/vda", &b, &err), 0);
	CHECK_EQ_STR(b.device, "/dev/vda");
	CHECK(b.fstype == NULL);
	CHECK_EQ_INT(cfg_parse_block_root("/dev/vda,fstype=ext4", &b, &err), 0);
	CHECK_EQ_STR(b.fstype, "ext4");
	CHECK_EQ_INT(cfg_parse_block_root("/dev/vda,fstype=ext4,fstype=xfs", &b, &err), 0);
	CHECK_EQ_STR(b.fstype, "xfs");
	CHECK_FAILS(cfg_parse_block_root(",fstype=ext4", &b, &err), "empty device path");
	CHECK_FAILS(cfg_parse_block_root("/dev/vda,fstype=", &b, &err), "empty fstype value");
	CHECK_FAILS(cfg_parse_block_root("/dev/vda,ro", &b, &err),
		    "unknown MSB_BLOCK_ROOT option");
	CHECK_FAILS(cfg_parse_block_root("/dev/vda,", &b, &err), "unknown MSB_BLOCK_ROOT option");
}

static void test_mounts(void)
{
	static struct cfg_mounts m;
	char big[40 * 8 + 1] = "";

	CHECK_EQ_INT(cfg_parse_mounts("data:/data", &m, &err), 0);
	CHECK_EQ_INT(m.n, 1);
	CHECK_EQ_STR(m.m[0].tag, "data");
	CHECK_EQ_STR(m.m[0].path, "/data");
	CHECK(!m.m[0].ro);
	CHECK_EQ_INT(cfg_parse_mounts(";data:/data;;cache:/var/cache:ro;", &m, &err), 0);
	CHECK_EQ_INT(m.n, 2);
	CHECK_EQ_STR(m.m[1].tag, "cache");
	CHECK_EQ_STR(m.m[1].path, "/var/cache");
	CHECK(m.m[1].ro);
	CHECK_EQ_INT(cfg_parse_mounts(";;", &m, &err), 0);
	CHECK_EQ_INT(m.n, 0);
	CHECK_FAILS(cfg_parse_mounts("data", &m, &err), "entry must be tag:path[:ro]");
	CHECK_FAILS(cfg_parse_mounts("data:/d:rw", &m, &err), "unknown flag");
	/* The flag is checked before the count. */
	CHECK_FAILS(cfg_parse_mounts("data:/d:rw:x", &m, &err), "unknown flag");
	CHECK_FAILS(cfg_parse_mounts("data:/d:ro:x", &m, &err), "too many parts");
	CHECK_FAILS(cfg_parse_mounts(":/d", &m, &err), "empty tag");
	CHECK_FAILS(cfg_parse_mounts("data:", &m, &err), "must be absolute");
	CHECK_FAILS(cfg_parse_mounts("data:rel/path", &m, &err), "must be absolute");
	for (int i = 0; i < 33; i++)
		strcat(big, "t:/a;");
	CHECK_FAILS(cfg_parse_mounts(big, &m, &err), "more than 32 entries");
}

static void test_tmpfs(void)
{
	static struct cfg_tmpfs_list t;
	char data[64];

	CHECK_EQ_INT(cfg_parse_tmpfs("/tmp", &t, &err), 0);
	CHECK_EQ_INT(t.n, 1);
	CHECK_EQ_INT(cfg_tmpfs_mode(&t.e[0]), 01777);
	CHECK(cfg_tmpfs_data(&t.e[0], data, sizeof(data)) > 0);
	CHECK_EQ_STR(str(data), "mode=1777");
	CHECK_EQ_INT(cfg_parse_tmpfs("/scratch,size=256,noexec;/var/tmp,size=128", &t, &err), 0);
	CHECK_EQ_INT(t.n, 2);
	CHECK(t.e[0].noexec && !t.e[1].noexec);
	cfg_tmpfs_data(&t.e[0], data, sizeof(data));
	CHECK_EQ_STR(str(data), "size=268435456,mode=755");
	cfg_tmpfs_data(&t.e[1], data, sizeof(data));
	CHECK_EQ_STR(str(data), "size=134217728,mode=1777");
	CHECK_EQ_INT(cfg_parse_tmpfs("/x,mode=0700,size=+4294967295", &t, &err), 0);
	CHECK_EQ_INT(t.e[0].mode, 0700);
	cfg_tmpfs_data(&t.e[0], data, sizeof(data));
	CHECK_EQ_STR(str(data), "size=4503599626321920,mode=700");
	/* A too small buffer is reported, not overrun. */
	CHECK_EQ_INT(cfg_tmpfs_data(&t.e[0], data, 8), -1);
	CHECK_FAILS(cfg_parse_tmpfs(",size=1", &t, &err), "empty tmpfs path");
	CHECK_FAILS(cfg_parse_tmpfs("/tmp,size=abc", &t, &err), "invalid tmpfs size");
	CHECK_FAILS(cfg_parse_tmpfs("/tmp,size=", &t, &err), "invalid tmpfs size");
	CHECK_FAILS(cfg_parse_tmpfs("/tmp,size=-1", &t, &err), "invalid tmpfs size");
	CHECK_FAILS(cfg_parse_tmpfs("/tmp,size= 1", &t, &err), "invalid tmpfs size");
	CHECK_FAILS(cfg_parse_tmpfs("/tmp,size=4294967296", &t, &err), "invalid tmpfs size");
	CHECK_FAILS(cfg_parse_tmpfs("/tmp,mode=8", &t, &err), "invalid octal tmpfs mode");
	CHECK_FAILS(cfg_parse_tmpfs("/tmp,mode=++1", &t, &err), "invalid octal tmpfs mode");
	CHECK_FAILS(cfg_parse_tmpfs("/tmp,exec", &t, &err), "unknown tmpfs option");
	CHECK_FAILS(cfg_parse_tmpfs("/tmp,", &t, &err), "unknown tmpfs option");
}

static void test_net(void)
{
	static const uint8_t mac[6] = { 0x02, 0x5a, 0x7b, 0x13, 0x01, 0x02 };
	struct cfg_net n;

	CHECK_EQ_INT(cfg_parse_net("iface=eth0,mac=02:5a:7b:13:01:02,mtu=9000", &n, &err), 0);
	CHECK_EQ_STR(n.iface, "eth0");
	CHECK_EQ_MEM(n.mac, 6, mac, 6);
	CHECK_EQ_INT(n.mtu, 9000);
	CHECK_EQ_INT(cfg_parse_net("mac=02:5A:7b:13:1:2,iface=x,iface=eth1", &n, &err), 0);
	CHECK_EQ_STR(n.iface, "eth1");
	CHECK_EQ_MEM(n.mac, 6, mac, 6);
	CHECK_EQ_INT(n.mtu, 1500);
	CHECK_FAILS(cfg_parse_net("iface=eth0", &n, &err), "missing mac");
	CHECK_FAILS(cfg_parse_net("mac=02:5a:7b:13:01:02", &n, &err), "missing iface");
	CHECK_FAILS(cfg_parse_net("iface=eth0,mac=02:5a:7b:13:01:02,", &n, &err), "unknown key");
	CHECK_FAILS(cfg_parse_net("iface=eth0,mac=02:5a:7b:13:01:02,speed=1", &n, &err),
		    "unknown key");
	CHECK_FAILS(cfg_parse_net("iface=0123456789abcdef,mac=02:5a:7b:13:01:02", &n, &err),
		    "iface must be");
	CHECK(cfg_parse_net("iface=0123456789abcde,mac=02:5a:7b:13:01:02", &n, &err) == 0);
	CHECK_FAILS(cfg_parse_net("iface=eth0,mac=02:5a:7b:13:01", &n, &err), "invalid mac");
	CHECK_FAILS(cfg_parse_net("iface=eth0,mac=02:5a:7b:13:01:02:03", &n, &err), "invalid mac");
	CHECK_FAILS(cfg_parse_net("iface=eth0,mac=02:5a:7b:13:01:100", &n, &err), "invalid mac");
	CHECK_FAILS(cfg_parse_net("iface=eth0,mac=02:5a:7b:13::02", &n, &err), "invalid mac");
	CHECK_FAILS(cfg_parse_net("iface=eth0,mac=02:5a:7b:13:01:0g", &n, &err), "invalid mac");
	CHECK_FAILS(cfg_parse_net("iface=eth0,mac=02:5a:7b:13:01:02,mtu=65536", &n, &err),
		    "invalid mtu");
}

static void test_ip(void)
{
	static const uint8_t a4[4] = { 100, 96, 1, 2 }, g4[4] = { 100, 96, 1, 1 };
	struct cfg_ip ip;
	uint8_t a6[16];
	char buf[256];

	CHECK_EQ_INT(cfg_parse_ip("addr=100.96.1.2/30,gw=100.96.1.1,dns=100.96.1.1",
				  AF_INET, &ip, &err), 0);
	CHECK_EQ_MEM(ip.addr, 4, a4, 4);
	CHECK_EQ_MEM(ip.gw, 4, g4, 4);
	CHECK_EQ_INT(ip.prefix, 30);
	CHECK(ip.has_dns);
	CHECK_EQ_INT(cfg_resolv(&ip, NULL, buf, sizeof(buf)), 22);
	CHECK_EQ_STR(str(buf), "nameserver 100.96.1.1\n");
	CHECK_EQ_INT(cfg_parse_ip("gw=0.0.0.0,addr=255.255.255.255/0", AF_INET, &ip, &err), 0);
	CHECK(!ip.has_dns);
	CHECK_EQ_INT(cfg_resolv(&ip, NULL, buf, sizeof(buf)), 0);
	CHECK_FAILS(cfg_parse_ip("addr=100.96.1.2,gw=1.1.1.1", AF_INET, &ip, &err),
		    "addr must be ADDR/PREFIX");
	CHECK_FAILS(cfg_parse_ip("addr=1.2.3.4/33,gw=1.1.1.1", AF_INET, &ip, &err),
		    "invalid prefix");
	CHECK_FAILS(cfg_parse_ip("addr=1.2.3.4/,gw=1.1.1.1", AF_INET, &ip, &err),
		    "invalid prefix");
	CHECK_FAILS(cfg_parse_ip("addr=01.2.3.4/8,gw=1.1.1.1", AF_INET, &ip, &err),
		    "invalid address");
	CHECK_FAILS(cfg_parse_ip("addr=1.2.3/8,gw=1.1.1.1", AF_INET, &ip, &err),
		    "invalid address");
	CHECK_FAILS(cfg_parse_ip("addr=1.2.3.4.5/8,gw=1.1.1.1", AF_INET, &ip, &err),
		    "invalid address");
	CHECK_FAILS(cfg_parse_ip("addr=1.2.3.256/8,gw=1.1.1.1", AF_INET, &ip, &err),
		    "invalid address");
	CHECK_FAILS(cfg_parse_ip("addr=1.2.3.4/8,gw=1.1.1.1 ", AF_INET, &ip, &err), "invalid gw");
	CHECK_FAILS(cfg_parse_ip("addr=1.2.3.4/8", AF_INET, &ip, &err), "missing gw");
	CHECK_FAILS(cfg_parse_ip("gw=1.1.1.1", AF_INET, &ip, &err), "missing addr");
	CHECK_FAILS(cfg_parse_ip("addr=1.2.3.4/8,gw=1.1.1.1,dns=x", AF_INET, &ip, &err),
		    "invalid dns");
	CHECK_FAILS(cfg_parse_ip("addr=1.2.3.4/8,gw=1.1.1.1,,", AF_INET, &ip, &err),
		    "unknown key");

	CHECK_EQ_INT(cfg_parse_ip("addr=fd42:6d73:62:2a::2/64,gw=fd42:6d73:62:2a::1,"
				  "dns=fd42:6d73:62:2a::1", AF_INET6, &ip, &err), 0);
	inet_pton(AF_INET6, "fd42:6d73:62:2a::2", a6);
	CHECK_EQ_MEM(ip.addr, 16, a6, 16);
	CHECK_EQ_INT(ip.prefix, 64);
	CHECK_EQ_INT(cfg_resolv(NULL, &ip, buf, sizeof(buf)), 30);
	CHECK_EQ_STR(str(buf), "nameserver fd42:6d73:62:2a::1\n");
	CHECK_FAILS(cfg_parse_ip("addr=fe80::1%eth0/64,gw=fe80::2", AF_INET6, &ip, &err),
		    "invalid address");
	CHECK_FAILS(cfg_parse_ip("addr=::1/129,gw=::2", AF_INET6, &ip, &err), "invalid prefix");
	CHECK_FAILS(cfg_parse_ip("addr=1.2.3.4/8,gw=::2", AF_INET6, &ip, &err), "invalid address");
}

static void test_resolv_both(void)
{
	struct cfg_ip v4, v6;
	char buf[80];

	cfg_parse_ip("addr=10.0.2.15/24,gw=10.0.2.2,dns=10.0.2.3", AF_INET, &v4, &err);
	cfg_parse_ip("addr=fd00::2/64,gw=fd00::1,dns=fd00::3", AF_INET6, &v6, &err);
	CHECK(cfg_resolv(&v4, &v6, buf, sizeof(buf)) > 0);
	CHECK_EQ_STR(str(buf), "nameserver 10.0.2.3\nnameserver fd00::3\n");
	CHECK_EQ_INT(cfg_resolv(&v4, &v6, buf, 20), -1);
}

static void test_files(void)
{
	char buf[512], add[CFG_PROFILE_ADD_MAX], prof[512];
	size_t n;

	CHECK(cfg_hosts(NULL, buf, sizeof(buf)) > 0);
	CHECK_EQ_STR(str(buf), "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
		     "fe00::\tip6-localnet\nff00::\tip6-mcastprefix\nff02::1\tip6-allnodes\n"
		     "ff02::2\tip6-allrouters\n");
	CHECK(cfg_hosts("box", buf, sizeof(buf)) > 0);
	CHECK(strncmp(buf, "127.0.0.1\tlocalhost box\n::1\tlocalhost ip6-localhost "
		      "ip6-loopback box\nfe00::", 70) == 0);
	CHECK_EQ_INT(cfg_hosts("box", buf, 40), -1);

	CHECK_EQ_INT(cfg_check_hostname("box", &err), 0);
	CHECK_EQ_INT(cfg_check_hostname("a", &err), 0);
	CHECK_EQ_INT(cfg_check_hostname("web-1.Example.ORG", &err), 0);
	CHECK_EQ_INT(cfg_check_hostname("a.01234567890123456789012345678901234567890123456789012345678901", &err), 0);
	CHECK_FAILS(cfg_check_hostname("0123456789012345678901234567890123456789012345678901234567890123", &err), "overlong");
	CHECK_FAILS(cfg_check_hostname("01234567890123456789012345678901234567890123456789012345678901234", &err), "1-64 bytes");
	CHECK_FAILS(cfg_check_hostname("", &err), "1-64 bytes");
	CHECK_FAILS(cfg_check_hostname("box evil", &err), "RFC 1123");
	CHECK_FAILS(cfg_check_hostname("box\n1.2.3.4 bank.example", &err), "RFC 1123");
	CHECK_FAILS(cfg_check_hostname("box#x", &err), "RFC 1123");
	CHECK_FAILS(cfg_check_hostname("box\t", &err), "RFC 1123");
	CHECK_FAILS(cfg_check_hostname("-box", &err), "RFC 1123");
	CHECK_FAILS(cfg_check_hostname("box-", &err), "RFC 1123");
	CHECK_FAILS(cfg_check_hostname("a..b", &err), "RFC 1123");
	CHECK_FAILS(cfg_check_hostname(".box", &err), "RFC 1123");
	CHECK_FAILS(cfg_check_hostname("box.", &err), "RFC 1123");
	CHECK_FAILS(cfg_check_hostname("a.-b", &err), "RFC 1123");
	CHECK_FAILS(cfg_check_hostname("b\xc3\xa9", &err), "RFC 1123");
	CHECK_FAILS(cfg_check_hostname("a_b", &err), "RFC 1123");

	n = cfg_profile_append("", 0, add);
	CHECK(n > 0 && add[0] == '#' && add[n - 1] == '\n');
	n = cfg_profile_append("export A=1", 10, add);
	CHECK(n > 0 && add[0] == '\n');
	memcpy(prof, "export A=1", 10);
	memcpy(prof + 10, add, n);
	CHECK_EQ_INT(cfg_profile_append(prof, 10 + n, add), 0);
	/* One marker alone is not the block: append again. */
	CHECK(cfg_profile_append("# >>> microsandbox scripts path >>>\n", 36, add) > 0);

	CHECK(cfg_cmdline_has("console=ttyS0 agentd.runtime=none quiet\n", "agentd.runtime=none"));
	CHECK(cfg_cmdline_has("agentd.runtime=none", "agentd.runtime=none"));
	CHECK(!cfg_cmdline_has("xagentd.runtime=none", "agentd.runtime=none"));
	CHECK(!cfg_cmdline_has("agentd.runtime=nonex", "agentd.runtime=none"));
	CHECK(!cfg_cmdline_has("", "agentd.runtime=none"));
}

static void test_value(void)
{
	char long_value[CFG_TEXT_MAX + 1];
	static struct cfg_mounts m;

	CHECK(cfg_value(NULL) == NULL);
	CHECK(cfg_value("") == NULL);
	CHECK(cfg_value("\xff") == NULL);
	CHECK(cfg_value("\xc0\x80") == NULL);       /* overlong NUL */
	CHECK(cfg_value("\xed\xa0\x80") == NULL);   /* surrogate */
	CHECK(cfg_value("a\xe2\x82") == NULL);      /* truncated */
	CHECK_EQ_STR(cfg_value(" "), " ");
	CHECK_EQ_STR(cfg_value("h\xc3\xa9llo \xf0\x9f\x99\x82"), "h\xc3\xa9llo \xf0\x9f\x99\x82");
	memset(long_value, 'a', CFG_TEXT_MAX);
	long_value[CFG_TEXT_MAX] = '\0';
	CHECK_FAILS(cfg_parse_mounts(long_value, &m, &err), "value longer than");
}

void test_initcfg(void)
{
	test_block_root();
	test_mounts();
	test_tmpfs();
	test_net();
	test_ip();
	test_resolv_both();
	test_files();
	test_value();
}
