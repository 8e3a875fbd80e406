/* Secondary host: feed the SVM the mirrored input, send its output to the comparator, and
 * make its TCP sequence numbers match the PVM's.
 *
 * -DFWD_IFINDEX=n, -DTAP_IFINDEX=n (the SVM's tap), -DVM_MAC=0x....
 * colo_fwd_in: tc ingress of the forward link. A PVM SYN/SYN-ACK copy (source MAC = the
 *              VM's) only teaches the PVM's ISN and is dropped; everything else (the
 *              clients' packets) is redirected to the SVM's tap.
 * colo_tap_eg: tc egress of the SVM's tap, whatever the path (forward link while protected,
 *              the bridge after failover): ack += offset and SACK edges += offset.
 * colo_tap_in: tc ingress of the SVM's tap (its output): learns the SVM's ISN from its
 *              SYN/SYN-ACK; protected: to the forward link unchanged; pass-through (after
 *              failover): seq -= offset for old connections, on to the bridge.
 * offset = svm_isn - pvm_isn per connection, in an LRU hash so stale flows age out.
 * Checksums: bpf_l4_csum_replace updates a full checksum and leaves a CHECKSUM_PARTIAL one
 * (offload, GSO) alone, which is what the device then completes.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "colo.h"
#include "parse.h"

BPF_PERCPU_ARRAY(counters, u64, C_MAX);
BPF_ARRAY(mode, u32, 1);
BPF_TABLE("lru_hash", struct colo_flow, struct colo_offset, offsets, 65536);

#define SACK_MAX_OPTS 8

static __always_inline void count(int idx, u64 n)
{
	u64 *v = counters.lookup(&idx);
	if (v)
		*v += n;
}

static __always_inline int protected(void)
{
	int zero = 0;
	u32 *m = mode.lookup(&zero);
	return !m || *m == COLO_MODE_PROTECTED;
}

/* Key from a VM output segment (src = VM) or a VM input segment (dst = VM). */
static __always_inline void key_out(struct colo_flow *k, const struct colo_pkt *p)
{
	k->vm_ip = p->saddr; k->peer_ip = p->daddr; k->vm_port = p->sport; k->peer_port = p->dport;
}

static __always_inline void key_in(struct colo_flow *k, const struct colo_pkt *p)
{
	k->vm_ip = p->daddr; k->peer_ip = p->saddr; k->vm_port = p->dport; k->peer_port = p->sport;
}

/* Learn one side's ISN. Copies and client packets travel different paths (and CPUs), so
 * either side may come first; a pair once complete is kept against retransmitted SYNs and
 * replaced when a new connection reuses the addresses (a different ISN). */
static __always_inline void learn_isn(struct colo_offset *o, u32 isn, int svm)
{
	u32 *mine = svm ? &o->svm_isn : &o->pvm_isn;

	if (o->have & COLO_PAIRED) {
		if (*mine == isn)
			return;
		o->have = 0;
	}
	*mine = isn;
	o->have |= svm ? COLO_HAVE_SVM : COLO_HAVE_PVM;
	count(svm ? C_SVM_ISN : C_PVM_ISN, 1);
	if ((o->have & COLO_HAVE_BOTH) == COLO_HAVE_BOTH) {
		o->offset = o->svm_isn - o->pvm_isn;
		o->have |= COLO_PAIRED;
	}
}

static __always_inline void learn(const struct colo_pkt *p, int svm)
{
	struct colo_flow k = {};
	struct colo_offset fresh = {}, *o;

	key_out(&k, p);
	o = offsets.lookup(&k);
	if (!o) {
		offsets.update(&k, &fresh);
		o = offsets.lookup(&k);
		if (!o)
			return;
	}
	learn_isn(o, bpf_ntohl(p->seq), svm);
}

static __always_inline int paired(const struct colo_offset *o)
{
	return o && (o->have & COLO_PAIRED) && o->offset != 0;
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

static __always_inline void fix_sack(struct __sk_buff *skb, const struct colo_pkt *p, u32 delta)
{
	u32 pos = 20;
	u8 kind, len;

#pragma unroll
	for (int i = 0; i < SACK_MAX_OPTS; i++) {
		if (pos + 2 > p->doff)
			return;
		if (bpf_skb_load_bytes(skb, p->l4 + pos, &kind, 1) < 0)
			return;
		if (kind == 0)
			return;
		if (kind == 1) {
			pos += 1;
			continue;
		}
		if (bpf_skb_load_bytes(skb, p->l4 + pos + 1, &len, 1) < 0 || len < 2)
			return;
		if (kind == 5 && pos + len <= p->doff) {
#pragma unroll
			for (int j = 0; j < 4; j++) {
				if (2 + j * 8 + 8 > len)
					break;
				shift32(skb, p->l4, pos + 2 + j * 8, delta);
				shift32(skb, p->l4, pos + 6 + j * 8, delta);
				count(C_SACK_REWRITES, 1);
			}
			return;
		}
		pos += len;
	}
}

int colo_fwd_in(struct __sk_buff *skb)
{
	struct colo_pkt p = {};
	int r = colo_parse(skb, &p);

	if (r == 1 && colo_mac_is_vm(p.eth.h_source)) {
		if ((p.flags & TCPF_SYN) && protected())
			learn(&p, 0);
		return TC_ACT_SHOT;  /* a PVM copy: never give it to the SVM */
	}
	if (r < 0)
		count(C_NON_IP, 1);
	count(C_FWD_IN_PKTS, 1);
	count(C_FWD_IN_BYTES, skb->len);
	r = bpf_redirect(TAP_IFINDEX, 0);
	if (r != TC_ACT_REDIRECT)
		count(C_REDIRECT_FAIL, 1);
	return r;
}

int colo_tap_eg(struct __sk_buff *skb)
{
	struct colo_pkt p = {};
	struct colo_flow k = {};
	struct colo_offset *o;

	if (colo_parse(skb, &p) != 1 || !(p.flags & TCPF_ACK))
		return TC_ACT_OK;
	key_in(&k, &p);
	o = offsets.lookup(&k);
	/* The client's handshake ACK acknowledges PVM ISN + 1: it teaches the PVM's ISN when
	 * it overtakes the PVM's SYN-ACK copy (they race on different CPUs). No PVM data can
	 * be acknowledged before it, since that data waits for the SVM's, which waits for
	 * this ACK. */
	if (o && o->have == COLO_HAVE_SVM && !(p.flags & TCPF_SYN) && protected())
		learn_isn(o, bpf_ntohl(p.ack) - 1, 0);
	if (!paired(o))
		return TC_ACT_OK;
	if (shift32(skb, p.l4, 8, o->offset) == 0)
		count(C_ACK_REWRITES, 1);
	if (p.doff > 20)
		fix_sack(skb, &p, o->offset);
	return TC_ACT_OK;
}

int colo_tap_in(struct __sk_buff *skb)
{
	struct colo_pkt p = {};
	struct colo_flow k = {};
	struct colo_offset *o;
	int prot = protected();
	int r = colo_parse(skb, &p);

	count(C_TAP_OUT_PKTS, 1);
	count(C_TAP_OUT_BYTES, skb->len);
	if (r < 0)
		count(C_NON_IP, 1);
	if (r == 1) {
		key_out(&k, &p);
		if ((p.flags & TCPF_SYN) && !(p.flags & TCPF_RST)) {
			if (prot)
				learn(&p, 1);
			else
				offsets.delete(&k);  /* after failover new connections run unrewritten */
		}
		/* While protected the comparator reads each side relative to its own ISN, so the
		 * SVM's output stays in its own sequence space (its SYN-ACK may leave before the
		 * PVM's ISN is known; rewriting only later segments would make one flow use two
		 * spaces). After failover the clients see it: then old connections are shifted. */
		o = prot ? 0 : offsets.lookup(&k);
		if (paired(o)) {
			if (shift32(skb, p.l4, 4, -o->offset) == 0)
				count(C_SEQ_REWRITES, 1);
		}
	}
	if (!prot)
		return TC_ACT_OK;
	r = bpf_redirect(FWD_IFINDEX, 0);
	if (r != TC_ACT_REDIRECT)
		count(C_REDIRECT_FAIL, 1);
	return r;
}
