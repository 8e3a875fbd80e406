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

struct colo_pkt {
	struct ethhdr eth;
	__u32 saddr, daddr;
	__u16 sport, dport;
	__u32 seq, ack;   /* network byte order, as on the wire */
	__u32 l4;         /* offset of the TCP header from the start of the frame */
	__u32 doff;       /* TCP header length in bytes */
	__u8 flags;
};

/* 1 when the frame is an unfragmented-or-first-fragment IPv4 TCP segment. */
static __always_inline int colo_parse(struct __sk_buff *skb, struct colo_pkt *p)
{
	struct iphdr ip;
	__u8 th[14];

	if (bpf_skb_load_bytes(skb, 0, &p->eth, sizeof(p->eth)) < 0)
		return 0;
	if (p->eth.h_proto != bpf_htons(ETH_P_IP))
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return 0;
	if (ip.protocol != IPPROTO_TCP || ip.ihl < 5)
		return 0;
	if (ip.frag_off & bpf_htons(0x1fff))  /* not the first fragment: no TCP header */
		return 0;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->l4 = ETH_HLEN + ip.ihl * 4;
	if (bpf_skb_load_bytes(skb, p->l4, th, sizeof(th)) < 0)
		return 0;
	p->sport = *(__u16 *)&th[0];
	p->dport = *(__u16 *)&th[2];
	p->seq = *(__u32 *)&th[4];
	p->ack = *(__u32 *)&th[8];
	p->doff = (th[12] >> 4) * 4;
	p->flags = th[13];
	return 1;
}

static __always_inline int colo_mac_is_vm(const unsigned char *mac)
{
	__u64 m = ((__u64)mac[0] << 40) | ((__u64)mac[1] << 32) | ((__u64)mac[2] << 24) |
		  ((__u64)mac[3] << 16) | ((__u64)mac[4] << 8) | (__u64)mac[5];
	return m == (__u64)(VM_MAC);
}

#endif
