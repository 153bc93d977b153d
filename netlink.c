/* SPDX-License-Identifier: Apache-2.0 */
/*
 * netlink.c - rtnetlink address and route setup (SPEC 10.8): one request
 * on a NETLINK_ROUTE datagram socket, one reply read; an NLMSG_ERROR
 * reply with a negative code is the failure.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "netlink.h"

/*
 * The few rtnetlink definitions needed, from the kernel's uapi headers
 * (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h): musl ships none.
 */
#define NETLINK_ROUTE   0
#define NLM_F_REQUEST   0x01
#define NLM_F_ACK       0x04
#define NLM_F_EXCL      0x200
#define NLM_F_CREATE    0x400
#define NLMSG_ERROR     2
#define RTM_NEWADDR     20
#define RTM_NEWROUTE    24
#define IFA_ADDRESS     1
#define IFA_LOCAL       2
#define IFA_F_NODAD     0x02
#define RTA_GATEWAY     5
#define RT_SCOPE_UNIVERSE 0
#define RT_TABLE_MAIN   254
#define RTPROT_BOOT     3
#define RTN_UNICAST     1

struct sockaddr_nl {
	unsigned short nl_family, nl_pad;
	uint32_t nl_pid, nl_groups;
};
struct nlmsghdr {
	uint32_t nlmsg_len;
	uint16_t nlmsg_type, nlmsg_flags;
	uint32_t nlmsg_seq, nlmsg_pid;
};
struct nlmsgerr {
	int error;
	struct nlmsghdr msg;
};
struct ifaddrmsg {
	uint8_t ifa_family, ifa_prefixlen, ifa_flags, ifa_scope;
	uint32_t ifa_index;
};
struct rtmsg {
	uint8_t rtm_family, rtm_dst_len, rtm_src_len, rtm_tos;
	uint8_t rtm_table, rtm_protocol, rtm_scope, rtm_type;
	uint32_t rtm_flags;
};
struct rtattr {
	uint16_t rta_len, rta_type;
};

#define NL_ALIGN(n)     (((n) + 3u) & ~3u)
#define NL_HDRLEN       NL_ALIGN(sizeof(struct nlmsghdr))

struct nl_req {
	struct nlmsghdr h;
	union {
		struct ifaddrmsg ifa;
		struct rtmsg rt;
	};
	char attrs[64];  /* two 16-byte addresses with their headers */
};

static void add_attr(struct nl_req *r, unsigned short type, const void *data,
		     unsigned short len)
{
	struct rtattr *a = (struct rtattr *)((char *)r + NL_ALIGN(r->h.nlmsg_len));

	a->rta_type = type;
	a->rta_len = (uint16_t)(sizeof(*a) + len);
	memcpy(a + 1, data, len);
	r->h.nlmsg_len = NL_ALIGN(r->h.nlmsg_len) + NL_ALIGN(a->rta_len);
}

/* The reply's verdict: 0 for an ack, -errno for an error, -EPROTO else. */
static int nl_verdict(const char *buf, ssize_t n)
{
	const struct nlmsghdr *h = (const struct nlmsghdr *)buf;
	const struct nlmsgerr *e;

	if (n < (ssize_t)(NL_HDRLEN + sizeof(*e)) || h->nlmsg_type != NLMSG_ERROR)
		return -EPROTO;
	e = (const struct nlmsgerr *)(buf + NL_HDRLEN);
	return e->error;
}

static int nl_transact(struct nl_req *r)
{
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	struct timeval tv = { .tv_sec = 5 };
	char buf[1024];
	ssize_t n;
	int fd, ret;

	fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0)
		return -errno;
	/* A bound socket that cannot hang init: the reply must come in 5 s. */
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (bind(fd, (struct sockaddr *)&(struct sockaddr_nl){ .nl_family = AF_NETLINK },
		 sizeof(struct sockaddr_nl)) < 0 ||
	    sendto(fd, r, r->h.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	n = recv(fd, buf, sizeof(buf), 0);
	ret = n < 0 ? -errno : nl_verdict(buf, n);
	close(fd);
	return ret;
}

static void nl_header(struct nl_req *r, unsigned short type, size_t body)
{
	memset(r, 0, sizeof(*r));
	r->h.nlmsg_len = (uint32_t)(NL_HDRLEN + body);
	r->h.nlmsg_type = type;
	r->h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
	r->h.nlmsg_seq = 1;
}

static unsigned short addr_len(int family)
{
	return family == AF_INET ? 4 : 16;
}

int nl_add_addr(int ifindex, int family, const uint8_t *addr, uint8_t prefix)
{
	struct nl_req r;

	nl_header(&r, RTM_NEWADDR, sizeof(struct ifaddrmsg));
	r.ifa.ifa_family = (unsigned char)family;
	r.ifa.ifa_prefixlen = prefix;
	/* Without NODAD an IPv6 address stays tentative for about a second. */
	r.ifa.ifa_flags = family == AF_INET6 ? IFA_F_NODAD : 0;
	r.ifa.ifa_scope = RT_SCOPE_UNIVERSE;
	r.ifa.ifa_index = (unsigned)ifindex;
	add_attr(&r, IFA_ADDRESS, addr, addr_len(family));
	if (family == AF_INET)
		add_attr(&r, IFA_LOCAL, addr, addr_len(family));
	return nl_transact(&r);
}

int nl_add_default_route(int family, const uint8_t *gw)
{
	struct nl_req r;

	nl_header(&r, RTM_NEWROUTE, sizeof(struct rtmsg));
	r.rt.rtm_family = (unsigned char)family;
	r.rt.rtm_table = RT_TABLE_MAIN;
	r.rt.rtm_protocol = RTPROT_BOOT;
	r.rt.rtm_scope = RT_SCOPE_UNIVERSE;
	r.rt.rtm_type = RTN_UNICAST;
	add_attr(&r, RTA_GATEWAY, gw, addr_len(family));
	return nl_transact(&r);
}
