/* SPDX-License-Identifier: Apache-2.0 */
/* netlink.h - the rtnetlink requests of SPEC 10.8 (netlink.c). */
#ifndef AGENTD_NETLINK_H
#define AGENTD_NETLINK_H

#include <stdint.h>

/* RTM_NEWADDR; IPv6 addresses get IFA_F_NODAD.  0 or -errno. */
int nl_add_addr(int ifindex, int family, const uint8_t *addr, uint8_t prefix);
/* RTM_NEWROUTE: default route via gw in the main table.  0 or -errno. */
int nl_add_default_route(int family, const uint8_t *gw);

#endif
