/* SPDX-License-Identifier: Apache-2.0 */
/*
 * netlink_batch - drives netlink.c's batches against the kernel of a
 * fresh network namespace (test/test_netlink.py runs it under unshare -rn
 * with lo up), printing each verdict for the test to check:
 *   one batch of four addresses on lo: 127.0.0.1/8 and ::1/128 exist
 *   already (EEXIST), 10.9.0.1/24 and fd00::5/64 are new (0);
 *   one batch of two default routes: via 192.168.77.1 is unreachable
 *   (-ENETUNREACH), via 10.9.0.1 works (0);
 *   a batch of more than NL_BATCH_MAX requests is refused, an empty one
 *   is a no-op.
 */
#include <errno.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "netlink.h"

static int lo_up(void)
{
	struct ifreq ifr = { 0 };
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), r;

	strcpy(ifr.ifr_name, "lo");
	r = fd < 0 || ioctl(fd, SIOCGIFFLAGS, &ifr) < 0 ? -1 : 0;
	ifr.ifr_flags |= IFF_UP;
	if (r == 0)
		r = ioctl(fd, SIOCSIFFLAGS, &ifr);
	if (fd >= 0)
		close(fd);
	return r;
}

int main(void)
{
	static const uint8_t lo4[4] = { 127, 0, 0, 1 }, new4[4] = { 10, 9, 0, 1 };
	static const uint8_t far4[4] = { 192, 168, 77, 1 }, lo6[16] = { [15] = 1 };
	static const uint8_t new6[16] = { 0xfd, [15] = 5 };
	int idx = (int)if_nametoindex("lo"), r;
	struct nl_batch b;

	if (lo_up() < 0) {
		perror("netlink_batch: bring lo up");
		return 1;
	}
	nl_batch_init(&b);
	nl_batch_addr(&b, idx, AF_INET, lo4, 8);
	nl_batch_addr(&b, idx, AF_INET, new4, 24);
	nl_batch_addr(&b, idx, AF_INET6, lo6, 128);
	nl_batch_addr(&b, idx, AF_INET6, new6, 64);
	r = nl_batch_send(&b);
	printf("addrs %d: %d %d %d %d\n", r, b.result[0], b.result[1], b.result[2], b.result[3]);
	nl_batch_init(&b);
	nl_batch_route(&b, AF_INET, far4);
	nl_batch_route(&b, AF_INET, new4);
	r = nl_batch_send(&b);
	printf("routes %d: %d %d\n", r, b.result[0], b.result[1]);
	nl_batch_init(&b);
	for (int i = 0; i <= NL_BATCH_MAX; i++)
		nl_batch_addr(&b, idx, AF_INET, lo4, 8);
	printf("too many %d\n", nl_batch_send(&b));
	nl_batch_init(&b);
	printf("empty %d\n", nl_batch_send(&b));
	return 0;
}
