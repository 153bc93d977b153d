/* SPDX-License-Identifier: Apache-2.0 */
/*
 * netlink.c - rtnetlink address and route setup (SPEC 10.8): requests
 * batched into one datagram on a NETLINK_ROUTE socket, one NLMSG_ERROR
 * acknowledgement read per request; a negative code is that request's
 * failure.  A boot step then costs one socket and one send, not one per
 * address.
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

/* Room for one request: header, body, two 16-byte addresses with theirs. */
#define NL_REQ_MAX      (NL_HDRLEN + 16 + 2 * NL_ALIGN(sizeof(struct rtattr) + 16))

static void add_attr(struct nlmsghdr *h, unsigned short type, const void *data,
		     unsigned short len)
{
	struct rtattr *a = (struct rtattr *)((char *)h + NL_ALIGN(h->nlmsg_len));

	a->rta_type = type;
	a->rta_len = (uint16_t)(sizeof(*a) + len);
	memcpy(a + 1, data, len);
	h->nlmsg_len = NL_ALIGN(h->nlmsg_len) + NL_ALIGN(a->rta_len);
}

/* Close a request: its length becomes part of the batch. */
static void nl_end(struct nl_batch *b, struct nlmsghdr *h)
{
	b->len += NL_ALIGN(h->nlmsg_len);
}

/*
 * Record the verdicts of the acknowledgements in one datagram in
 * b->result (seq 1 is the first request).  -EPROTO for an empty datagram
 * or anything that is not an ack of a request still waiting for one.
 */
static int nl_take_acks(struct nl_batch *b, const char *buf, size_t n, unsigned *left)
{
	if (n < NL_HDRLEN)
		return -EPROTO;
	while (n >= NL_HDRLEN) {
		const struct nlmsghdr *h = (const struct nlmsghdr *)buf;
		const struct nlmsgerr *e = (const struct nlmsgerr *)(buf + NL_HDRLEN);
		size_t len = NL_ALIGN(h->nlmsg_len);

		if (h->nlmsg_len < NL_HDRLEN + sizeof(*e) || h->nlmsg_len > n ||
		    h->nlmsg_type != NLMSG_ERROR || h->nlmsg_seq < 1 || h->nlmsg_seq > b->n ||
		    b->result[h->nlmsg_seq - 1] != 1)
			return -EPROTO;
		b->result[h->nlmsg_seq - 1] = e->error > 0 ? -EPROTO : e->error;
		(*left)--;
		buf += len < n ? len : n;
		n -= len < n ? len : n;
	}
	return 0;
}

/* One bound socket that cannot hang init: every ack must come in 5 s. */
static int nl_socket(void)
{
	struct timeval tv = { .tv_sec = 5 };
	int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_ROUTE), e;

	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (bind(fd, (struct sockaddr *)&(struct sockaddr_nl){ .nl_family = AF_NETLINK },
		 sizeof(struct sockaddr_nl)) < 0) {
		e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

int nl_batch_send(struct nl_batch *b)
{
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	uint32_t buf[256];  /* aligned for the headers */
	unsigned left = b->n;
	int fd, ret = 0;
	ssize_t n;

	if (b->len > sizeof(b->buf))
		return -ENOBUFS;
	if (!b->n)
		return 0;
	fd = nl_socket();
	if (fd < 0)
		return fd;
	for (unsigned i = 0; i < b->n; i++)
		b->result[i] = 1;  /* no verdict yet */
	/* The kernel handles the requests in order and acks each one. */
	if (sendto(fd, b->buf, b->len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
		ret = -errno;
	while (!ret && left) {
		n = recv(fd, buf, sizeof(buf), 0);
		ret = n < 0 ? -errno : nl_take_acks(b, (const char *)buf, (size_t)n, &left);
	}
	close(fd);
	return ret;
}

static void *nl_header(struct nl_batch *b, unsigned short type, size_t body)
{
	struct nlmsghdr *h;

	if (b->n == NL_BATCH_MAX || b->len > sizeof(b->buf) - NL_REQ_MAX) {
		b->len = sizeof(b->buf) + 1;  /* nl_batch_send refuses it */
		return NULL;
	}
	h = (struct nlmsghdr *)((char *)b->buf + b->len);
	memset(h, 0, NL_REQ_MAX);
	h->nlmsg_len = (uint32_t)(NL_HDRLEN + body);
	h->nlmsg_type = type;
	h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
	h->nlmsg_seq = ++b->n;
	return (char *)h + NL_HDRLEN;
}

static unsigned short addr_len(int family)
{
	return family == AF_INET ? 4 : 16;
}

void nl_batch_init(struct nl_batch *b)
{
	b->n = 0;
	b->len = 0;
}

void nl_batch_addr(struct nl_batch *b, int ifindex, int family, const uint8_t *addr,
		   uint8_t prefix)
{
	struct ifaddrmsg *ifa = nl_header(b, RTM_NEWADDR, sizeof(*ifa));
	struct nlmsghdr *h;

	if (!ifa)
		return;
	h = (struct nlmsghdr *)((char *)ifa - NL_HDRLEN);
	ifa->ifa_family = (unsigned char)family;
	ifa->ifa_prefixlen = prefix;
	/* Without NODAD an IPv6 address stays tentative for about a second. */
	ifa->ifa_flags = family == AF_INET6 ? IFA_F_NODAD : 0;
	ifa->ifa_scope = RT_SCOPE_UNIVERSE;
	ifa->ifa_index = (unsigned)ifindex;
	add_attr(h, IFA_ADDRESS, addr, addr_len(family));
	if (family == AF_INET)
		add_attr(h, IFA_LOCAL, addr, addr_len(family));
	nl_end(b, h);
}

void nl_batch_route(struct nl_batch *b, int family, const uint8_t *gw)
{
	struct rtmsg *rt = nl_header(b, RTM_NEWROUTE, sizeof(*rt));
	struct nlmsghdr *h;

	if (!rt)
		return;
	h = (struct nlmsghdr *)((char *)rt - NL_HDRLEN);
	rt->rtm_family = (unsigned char)family;
	rt->rtm_table = RT_TABLE_MAIN;
	rt->rtm_protocol = RTPROT_BOOT;
	rt->rtm_scope = RT_SCOPE_UNIVERSE;
	rt->rtm_type = RTN_UNICAST;
	add_attr(h, RTA_GATEWAY, gw, addr_len(family));
	nl_end(b, h);
}
