/* Header parsing for the tc programs (bytes are copied with bpf_skb_load_bytes so that
 * GSO super-packets and non-linear skbs parse the same as small ones). */
#ifndef COLO_PARSE_H
#define COLO_PARSE_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

#define COLO_ETH_P_IPV6 0x86DD
#define COLO_IP6_HLEN 40
#define COLO_IP6_EXT_MAX 4  /* extension headers walked to see whether TCP follows */

/* colo_parse results */
#define COLO_PARSE_TCP 1      /* an IPv4 or IPv6 TCP header at p->l4 */
#define COLO_PARSE_OTHER 0    /* IP, but nothing we rewrite (other protocol, fragment) */
#define COLO_PARSE_NON_IP -1  /* neither IPv4 nor IPv6 */
#define COLO_PARSE_IP6_EXT -2 /* IPv6 TCP behind extension headers (or a chain longer than
			       * we walk, or ESP): passed unrewritten, counted */

struct colo_pkt {
	struct ethhdr eth;
	__u32 saddr[4], daddr[4];  /* IPv6, or IPv4 v4-mapped (::ffff:a.b.c.d) */
	__u16 sport, dport;
	__u32 seq, ack;   /* network byte order, as on the wire */
	__u32 l4;         /* offset of the TCP header from the start of the frame */
	__u32 doff;       /* TCP header length in bytes */
	__u8 flags;
};

/* The fixed IPv6 header (uapi/linux/ipv6.h pulls in more than the programs need). */
struct colo_ip6 {
	__u32 vtc_flow;
	__u16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u32 saddr[4];
	__u32 daddr[4];
};

/* RFC 7045's extension headers: hop-by-hop, routing, fragment, ESP, AH, destination
 * options, mobility, HIP, shim6. */
static __always_inline int colo_ip6_is_ext(__u8 nh)
{
	return nh == 0 || nh == 43 || nh == 44 || nh == 50 || nh == 51 || nh == 60 ||
	       nh == 135 || nh == 139 || nh == 140;
}

/* An IPv6 packet whose next header is an extension header: COLO_PARSE_IP6_EXT when TCP
 * follows (or ESP hides what follows, or the chain is longer than we walk), else
 * COLO_PARSE_OTHER. Such segments are never rewritten: the programs pass them as they are
 * (Linux sends none for TCP; a client's would leave that connection in the PVM's spaces). */
static __always_inline int colo_ip6_ext(struct __sk_buff *skb, __u8 nh)
{
	__u32 off = ETH_HLEN + COLO_IP6_HLEN;
	__u8 h[2];

#pragma unroll
	for (int i = 0; i < COLO_IP6_EXT_MAX; i++) {
		if (nh == IPPROTO_TCP || nh == 50)
			return COLO_PARSE_IP6_EXT;
		if (!colo_ip6_is_ext(nh))
			return COLO_PARSE_OTHER;
		if (bpf_skb_load_bytes(skb, off, h, 2) < 0)
			return COLO_PARSE_OTHER;
		if (nh == 44)
			off += 8;                 /* fragment: fixed size */
		else if (nh == 51)
			off += (h[1] + 2) * 4;    /* AH: 4-byte units */
		else
			off += (h[1] + 1) * 8;    /* the others: 8-byte units */
		nh = h[0];
	}
	return nh == IPPROTO_TCP || colo_ip6_is_ext(nh) ? COLO_PARSE_IP6_EXT : COLO_PARSE_OTHER;
}

/* The TCP header at p->l4 into p. */
static __always_inline int colo_parse_tcp(struct __sk_buff *skb, struct colo_pkt *p)
{
	__u8 th[14];

	if (bpf_skb_load_bytes(skb, p->l4, th, sizeof(th)) < 0)
		return COLO_PARSE_OTHER;
	p->sport = *(__u16 *)&th[0];
	p->dport = *(__u16 *)&th[2];
	p->seq = *(__u32 *)&th[4];
	p->ack = *(__u32 *)&th[8];
	p->doff = (th[12] >> 4) * 4;
	p->flags = th[13];
	return COLO_PARSE_TCP;
}

/* COLO_PARSE_TCP when the frame is an unfragmented-or-first-fragment IPv4 TCP segment or
 * an IPv6 TCP segment right behind the fixed header; see the COLO_PARSE_* values. */
static __always_inline int colo_parse(struct __sk_buff *skb, struct colo_pkt *p)
{
	struct iphdr ip;
	struct colo_ip6 ip6;

	if (bpf_skb_load_bytes(skb, 0, &p->eth, sizeof(p->eth)) < 0)
		return COLO_PARSE_OTHER;
	if (p->eth.h_proto == bpf_htons(COLO_ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
			return COLO_PARSE_OTHER;
		if (ip6.nexthdr != IPPROTO_TCP)
			return colo_ip6_ext(skb, ip6.nexthdr);
		__builtin_memcpy(p->saddr, ip6.saddr, 16);
		__builtin_memcpy(p->daddr, ip6.daddr, 16);
		p->l4 = ETH_HLEN + COLO_IP6_HLEN;
		return colo_parse_tcp(skb, p);
	}
	if (p->eth.h_proto != bpf_htons(ETH_P_IP))
		return COLO_PARSE_NON_IP;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return COLO_PARSE_OTHER;
	if (ip.protocol != IPPROTO_TCP || ip.ihl < 5)
		return COLO_PARSE_OTHER;
	if (ip.frag_off & bpf_htons(0x1fff))  /* not the first fragment: no TCP header */
		return COLO_PARSE_OTHER;
	p->saddr[2] = bpf_htonl(0xffff);
	p->saddr[3] = ip.saddr;
	p->daddr[2] = bpf_htonl(0xffff);
	p->daddr[3] = ip.daddr;
	p->l4 = ETH_HLEN + ip.ihl * 4;
	return colo_parse_tcp(skb, p);
}

/* A MAC address as a number, to compare with -DVM_MAC=0x... and the like. */
static __always_inline __u64 colo_mac(const unsigned char *mac)
{
	return ((__u64)mac[0] << 40) | ((__u64)mac[1] << 32) | ((__u64)mac[2] << 24) |
	       ((__u64)mac[3] << 16) | ((__u64)mac[4] << 8) | (__u64)mac[5];
}

/* Write a MAC address given as a number (network order) at `off` in the frame. */
static __always_inline int colo_store_mac(struct __sk_buff *skb, __u32 off, __u64 mac)
{
	unsigned char b[6] = {mac >> 40, mac >> 32, mac >> 24, mac >> 16, mac >> 8, mac};

	return bpf_skb_store_bytes(skb, off, b, 6, 0);
}

#endif
