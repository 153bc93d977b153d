/* SPDX-License-Identifier: Apache-2.0 */
/* netlink.c - rtnetlink address and route setup. STUB: the init issue fills this in. */
typedef int netlink_placeholder;
