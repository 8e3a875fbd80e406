/* Moving a TCP segment between two sequence and timestamp spaces (the SVM's and the
 * PVM's), with incremental checksum updates. Shared by secondary.bpf.c (toward the SVM,
 * and its output after failover) and primary.bpf.c (flows carried over a role swap).
 * No map access here: bcc rewrites map calls only in the main file, so the callers
 * count what struct colo_rewrites reports. */
#ifndef COLO_REWRITE_H
#define COLO_REWRITE_H

#include "colo.h"
#include "parse.h"

#define TCP_OPTS_MAX 10  /* options walked: SYN's mss, sackOK, TS, nop, wscale fit */
#define TCPOPT_NOP 1
#define TCPOPT_SACK 5
#define TCPOPT_TS 8
#define TCPOLEN_TS 10

struct colo_rewrites {
	u32 ack, sack, tsecr, seq, tsval;
};

/* Add what a rewrite reported to the counters. A macro: it expands in the main file,
 * where count() (a map lookup) is defined, so bcc rewrites its map access. */
#define COUNT_REWRITES(n) do {						\
		if ((n)->ack)						\
			count(C_ACK_REWRITES, (n)->ack);		\
		if ((n)->sack)						\
			count(C_SACK_REWRITES, (n)->sack);		\
		if ((n)->tsecr)						\
			count(C_TSECR_REWRITES, (n)->tsecr);		\
		if ((n)->seq)						\
			count(C_SEQ_REWRITES, (n)->seq);		\
		if ((n)->tsval)						\
			count(C_TSVAL_REWRITES, (n)->tsval);		\
	} while (0)

/* Key from a VM output segment (src = VM) or a VM input segment (dst = VM). */
static __always_inline void key_out(struct colo_flow *k, const struct colo_pkt *p)
{
	__builtin_memcpy(k->vm_ip, p->saddr, 16);
	__builtin_memcpy(k->peer_ip, p->daddr, 16);
	k->vm_port = p->sport; k->peer_port = p->dport;
}

static __always_inline void key_in(struct colo_flow *k, const struct colo_pkt *p)
{
	__builtin_memcpy(k->vm_ip, p->daddr, 16);
	__builtin_memcpy(k->peer_ip, p->saddr, 16);
	k->vm_port = p->dport; k->peer_port = p->sport;
}

/* Offset of the timestamp option from the TCP header, 0 when the segment has none. */
static __always_inline u32 ts_option(struct __sk_buff *skb, const struct colo_pkt *p)
{
	u32 pos = 20;
	u8 kind, len;

#pragma unroll
	for (int i = 0; i < TCP_OPTS_MAX; i++) {
		if (pos + 2 > p->doff)
			return 0;
		if (bpf_skb_load_bytes(skb, p->l4 + pos, &kind, 1) < 0 || kind == 0)
			return 0;
		if (kind == TCPOPT_NOP) {
			pos += 1;
			continue;
		}
		if (bpf_skb_load_bytes(skb, p->l4 + pos + 1, &len, 1) < 0 || len < 2)
			return 0;
		if (kind == TCPOPT_TS)
			return len == TCPOLEN_TS && pos + TCPOLEN_TS <= p->doff ? pos : 0;
		pos += len;
	}
	return 0;
}

/* The 32-bit field `at` bytes into the timestamp option (2: TSval, 6: TSecr); 0 if none. */
static __always_inline int ts_field(struct __sk_buff *skb, const struct colo_pkt *p, u32 at,
				    u32 *val)
{
	u32 pos = ts_option(skb, p), raw;

	if (!pos || bpf_skb_load_bytes(skb, p->l4 + pos + at, &raw, 4) < 0)
		return 0;
	*val = bpf_ntohl(raw);
	return 1;
}

/* Rewrite a 32-bit field at `off` by `delta` and fix the TCP checksum. A field at an odd
 * offset within the segment straddles 16-bit checksum words: its contribution is then
 * byte-swapped within each half, so the incremental update is fed swapped values. */
static __always_inline int shift32(struct __sk_buff *skb, u32 l4, u32 off, u32 delta)
{
	u32 old_raw, new_raw, new_host, f, t;

	if (bpf_skb_load_bytes(skb, l4 + off, &old_raw, 4) < 0)
		return -1;
	new_host = bpf_ntohl(old_raw) + delta;
	new_raw = bpf_htonl(new_host);
	if (bpf_skb_store_bytes(skb, l4 + off, &new_raw, 4, 0) < 0)
		return -1;
	f = old_raw;
	t = new_raw;
	if (off & 1) {
		f = ((f & 0x00ff00ff) << 8) | ((f >> 8) & 0x00ff00ff);
		t = ((t & 0x00ff00ff) << 8) | ((t >> 8) & 0x00ff00ff);
	}
	return bpf_l4_csum_replace(skb, l4 + 16, f, t, 4);
}

/* Toward the VM: SACK edges += delta (sequence space), TSecr += ts_delta (timestamps). */
static __always_inline void fix_options(struct __sk_buff *skb, const struct colo_pkt *p,
					u32 delta, u32 ts_delta, struct colo_rewrites *n)
{
	u32 pos = 20;
	u8 kind, len;
	int sack = delta != 0, ts = ts_delta != 0;

#pragma unroll
	for (int i = 0; i < TCP_OPTS_MAX; i++) {
		if (!(sack || ts) || pos + 2 > p->doff)
			return;
		if (bpf_skb_load_bytes(skb, p->l4 + pos, &kind, 1) < 0)
			return;
		if (kind == 0)
			return;
		if (kind == TCPOPT_NOP) {
			pos += 1;
			continue;
		}
		if (bpf_skb_load_bytes(skb, p->l4 + pos + 1, &len, 1) < 0 || len < 2)
			return;
		if (kind == TCPOPT_SACK && sack && pos + len <= p->doff) {
#pragma unroll
			for (int j = 0; j < 4; j++) {
				if (2 + j * 8 + 8 > len)
					break;
				shift32(skb, p->l4, pos + 2 + j * 8, delta);
				shift32(skb, p->l4, pos + 6 + j * 8, delta);
				n->sack++;
			}
			sack = 0;
		} else if (kind == TCPOPT_TS && ts && len == TCPOLEN_TS &&
			   pos + TCPOLEN_TS <= p->doff) {
			if (shift32(skb, p->l4, pos + 6, ts_delta) == 0)
				n->tsecr++;
			ts = 0;
		}
		pos += len;
	}
}

/* Toward the VM: ack, SACK edges and TSecr from the clients' spaces into the VM's. */
static __always_inline void to_vm(struct __sk_buff *skb, const struct colo_pkt *p,
				  const struct colo_offset *o, struct colo_rewrites *n)
{
	u32 ts_delta = (o->ts_have & COLO_HAVE_BOTH) == COLO_HAVE_BOTH ? o->ts_offset : 0;
	u32 ecr;

	/* A segment that acknowledges only the SYN echoes one of the PVM's SYN-ACKs, maybe a
	 * retransmitted one (sent a second or more after the first, when the SVM was slow).
	 * Shifted by the offset of the first SYN-ACKs it can land past the SVM's last SYN-ACK,
	 * and a SYN_RECV socket (Linux >= 6.15) drops an ACK whose TSecr is outside its own
	 * SYN-ACKs' TSvals. Echo the SVM's first SYN-ACK instead: always inside. */
	if (ts_delta && (o->have & COLO_HAVE_PVM) && bpf_ntohl(p->ack) == o->pvm_isn + 1 &&
	    ts_field(skb, p, 6, &ecr))
		ts_delta = o->svm_tsval - ecr;

	if (o->offset && shift32(skb, p->l4, 8, o->offset) == 0)
		n->ack++;
	if (p->doff > 20)
		fix_options(skb, p, o->offset, ts_delta, n);
}

/* From the VM: seq and TSval from the VM's spaces into the clients'. */
static __always_inline void from_vm(struct __sk_buff *skb, const struct colo_pkt *p,
				    const struct colo_offset *o, struct colo_rewrites *n)
{
	u32 pos;

	if (o->offset && shift32(skb, p->l4, 4, -o->offset) == 0)
		n->seq++;
	if ((o->ts_have & COLO_HAVE_BOTH) == COLO_HAVE_BOTH && o->ts_offset) {
		pos = ts_option(skb, p);
		if (pos && shift32(skb, p->l4, pos + 2, -o->ts_offset) == 0)
			n->tsval++;
	}
}

#endif
