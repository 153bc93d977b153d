/* SPDX-License-Identifier: Apache-2.0 */
/* netlink.h - the rtnetlink requests of SPEC 10.8 (netlink.c). */
#ifndef AGENTD_NETLINK_H
#define AGENTD_NETLINK_H

#include <stddef.h>
#include <stdint.h>

#define NL_BATCH_MAX 4

/* Requests sent together and acknowledged together (nl_batch_send). */
struct nl_batch {
	unsigned n;                 /* requests added */
	size_t len;                 /* bytes of buf used; past the end = overflow */
	int result[NL_BATCH_MAX];   /* per request: 0 or -errno, once sent */
	uint32_t buf[NL_BATCH_MAX * 24];  /* the datagram; a request is <= 72 bytes */
};

void nl_batch_init(struct nl_batch *b);
/* RTM_NEWADDR; IPv6 addresses get IFA_F_NODAD. */
void nl_batch_addr(struct nl_batch *b, int ifindex, int family, const uint8_t *addr,
		   uint8_t prefix);
/* RTM_NEWROUTE: default route via gw in the main table. */
void nl_batch_route(struct nl_batch *b, int family, const uint8_t *gw);
/* Send the batch and collect every acknowledgement: 0 with result[]
 * filled, or -errno when the exchange itself failed (no socket, no
 * acknowledgement within 5 s, more requests than NL_BATCH_MAX). */
int nl_batch_send(struct nl_batch *b);

#endif
