/* Secondary host: feed the SVM the mirrored input, send its output to the comparator, and
 * make its TCP sequence numbers match the PVM's.
 *
 * -DFWD_IFINDEX=n, -DTAP_IFINDEX=n (the SVM's tap), -DVM_MAC=0x...., -DFWD_MAC=0x... (this
 * host's forward-link MAC), -DPEER_MAC=0x... (the primary host's forward-link MAC).
 * colo_fwd_in: tc ingress of the forward link. From the primary host's MAC come its own
 *              frames: a PVM SYN/SYN-ACK copy only teaches the PVM's ISN and is dropped; a
 *              carried-flow announcement (ethertype 0x88B5) goes up to the proxy's socket,
 *              which checks its HMAC and writes `carried` itself. The primary never
 *              mirrors a frame from that MAC, the VM's or ours, nor our ethertype, so such
 *              frames from elsewhere are forged: dropped and counted (C_FWD_FOREIGN).
 *              Everything else (the clients' packets) is redirected to the SVM's tap.
 * colo_tap_eg: tc egress of the SVM's tap, whatever the path (forward link while protected,
 *              the bridge after failover): ack += offset, SACK edges += offset and the
 *              timestamp echo (TSecr) += ts_offset.
 * colo_tap_in: tc ingress of the SVM's tap (its output): learns the SVM's ISN (and TSval)
 *              from its SYN/SYN-ACK; protected: to the forward link with this host's
 *              forward-link MAC as source (the primary compares only frames from it),
 *              otherwise unchanged; pass-through
 *              (after failover): seq -= offset, TSval -= ts_offset for old connections, on
 *              to the bridge.
 * offset = svm_isn - pvm_isn per connection, in an LRU hash so stale flows age out; IPv4
 * and IPv6 flows share it (IPv4 addresses v4-mapped in the 16-byte key fields). IPv6 TCP
 * behind extension headers is passed unrewritten and counted (C_IP6_EXT).
 * ts_offset = svm_tsval - pvm_tsval of the two handshake segments: the clients echo the
 * PVM's timestamps, and a SYN_RECV socket (Linux >= 6.15, commit 3ba075278c11) drops a
 * handshake ACK whose TSecr is not one of its own SYN-ACKs' TSvals (TcpExtTSEcrRejected).
 * Without this the SVM never completes a handshake whose SYN-ACK left in another
 * millisecond tick than the PVM's: it answers the client's ACK and data with challenge
 * ACKs only, and the PVM's replies wait for a twin that never comes.
 * Checksums: bpf_l4_csum_replace updates a full checksum and leaves a CHECKSUM_PARTIAL one
 * (offload, GSO) alone, which is what the device then completes.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "colo.h"
#include "parse.h"
#include "rewrite.h"

BPF_PERCPU_ARRAY(counters, u64, C_MAX);
BPF_ARRAY(mode, u32, 1);
BPF_TABLE("lru_hash", struct colo_flow, struct colo_offset, offsets, 65536);
/* Flows the primary carries over a role swap (announced on the forward link, written here
 * by the proxy after it checked the announcement's HMAC): the VM runs
 * them in its own spaces, shifted from the clients' by these offsets. While protected the
 * primary's uplink shifts them, so the mirror already brings them in the VM's spaces;
 * after a failover this host's tap does, like `offsets`. Checkpoints do not reset them. */
BPF_TABLE("lru_hash", struct colo_flow, struct colo_offset, carried, 65536);

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

/* Learn one side's ISN, and the timestamp its handshake segment carried (its TSval, or
 * for the PVM side learned from the client's ACK, the TSecr that echoes it). Copies and
 * client packets travel different paths (and CPUs), so either side may come first; a
 * side once known is kept against retransmitted SYNs (the first timestamp counts: it is
 * the one the peer echoes, and the SYN_RECV socket's lowest acceptable one) and replaced
 * when a new connection reuses the addresses (a different ISN). */
static __always_inline void learn_isn(struct colo_offset *o, u32 isn, int svm, int has_ts,
				      u32 ts)
{
	u64 bit = svm ? COLO_HAVE_SVM : COLO_HAVE_PVM;
	u64 other = svm ? COLO_HAVE_PVM : COLO_HAVE_SVM;
	u32 *mine = svm ? &o->svm_isn : &o->pvm_isn;
	u64 old;

	if ((o->have & bit) && *mine == isn)
		return;
	if (o->have & COLO_PAIRED) {
		o->have = 0;
		o->ts_have = 0;
	}
	/* The two sides are learned on different CPUs at nearly the same moment (both VMs
	 * answer the same SYN): each writes only its own fields, then announces them with an
	 * atomic OR. A plain `have |= bit` lost one side now and then, and the flow stayed
	 * unrewritten: the SVM reset the client's handshake ACK (a tcp_flags checkpoint). The
	 * side whose OR finds the other's bit already set computes the offsets, once. */
	*mine = isn;
	if (has_ts) {
		if (svm)
			o->svm_tsval = ts;
		else
			o->pvm_tsval = ts;
		__sync_fetch_and_or(&o->ts_have, bit);
	} else {
		__sync_fetch_and_and(&o->ts_have, ~bit);
	}
	count(svm ? C_SVM_ISN : C_PVM_ISN, 1);
	old = __sync_fetch_and_or(&o->have, bit);
	if ((old & other) && !(old & COLO_PAIRED)) {
		o->offset = o->svm_isn - o->pvm_isn;
		o->ts_offset = (o->ts_have & COLO_HAVE_BOTH) == COLO_HAVE_BOTH ?
			       o->svm_tsval - o->pvm_tsval : 0;
		__sync_fetch_and_or(&o->have, COLO_PAIRED);
	}
}

static __always_inline void learn(struct __sk_buff *skb, const struct colo_pkt *p, int svm)
{
	struct colo_flow k = {};
	struct colo_offset fresh = {}, *o;
	u32 tsval = 0;
	int has_ts = ts_field(skb, p, 2, &tsval);

	key_out(&k, p);
	o = offsets.lookup(&k);
	if (!o) {
		/* NOEXIST: when the other side creates the entry at the same moment, keep the
		 * one that won (an update would replace it, and the other CPU's learning with it). */
		offsets.insert(&k, &fresh);
		o = offsets.lookup(&k);
		if (!o)
			return;
	}
	learn_isn(o, bpf_ntohl(p->seq), svm, has_ts, tsval);
}

static __always_inline int paired(const struct colo_offset *o)
{
	return o && (o->have & COLO_PAIRED);
}

int colo_fwd_in(struct __sk_buff *skb)
{
	struct colo_pkt p = {};
	int r = colo_parse(skb, &p);
	u64 src = colo_mac(p.eth.h_source);

	if (src == (u64)(PEER_MAC)) {
		if (p.eth.h_proto == bpf_htons(COLO_ETH_P_CARRY))
			return TC_ACT_OK;  /* to the proxy's socket, bound to this ethertype */
		if (r == COLO_PARSE_TCP && (p.flags & TCPF_SYN) && protected())
			learn(skb, &p, 0);
		return TC_ACT_SHOT;  /* the primary host's own: never give it to the SVM */
	}
	if (src == (u64)(VM_MAC) || src == (u64)(FWD_MAC) ||
	    p.eth.h_proto == bpf_htons(COLO_ETH_P_CARRY)) {
		count(C_FWD_FOREIGN, 1);
		return TC_ACT_SHOT;
	}
	if (r == COLO_PARSE_NON_IP)
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
	struct colo_rewrites n = {};
	u32 ecr = 0;
	int has_ts, r = colo_parse(skb, &p);

	if (r == COLO_PARSE_IP6_EXT)
		count(C_IP6_EXT, 1);
	if (r != COLO_PARSE_TCP)
		return TC_ACT_OK;
	key_in(&k, &p);
	if (!(p.flags & TCPF_ACK)) {
		if (p.flags & TCPF_SYN)
			carried.delete(&k);  /* the addresses start a new connection */
		return TC_ACT_OK;
	}
	if (!protected()) {
		o = carried.lookup(&k);
		if (o) {
			to_vm(skb, &p, o, &n);
			COUNT_REWRITES(&n);
			return TC_ACT_OK;
		}
	}
	o = offsets.lookup(&k);
	/* The client's handshake ACK acknowledges PVM ISN + 1 and echoes the PVM's SYN-ACK
	 * TSval: it teaches both when it overtakes the PVM's SYN-ACK copy (they race on
	 * different CPUs). No PVM data can be acknowledged before it, since that data waits
	 * for the SVM's, which waits for this ACK. */
	if (o && o->have == COLO_HAVE_SVM && !(p.flags & TCPF_SYN) && protected()) {
		has_ts = ts_field(skb, &p, 6, &ecr);
		learn_isn(o, bpf_ntohl(p.ack) - 1, 0, has_ts, ecr);
	}
	if (!paired(o))
		return TC_ACT_OK;
	to_vm(skb, &p, o, &n);
	COUNT_REWRITES(&n);
	return TC_ACT_OK;
}

int colo_tap_in(struct __sk_buff *skb)
{
	struct colo_pkt p = {};
	struct colo_flow k = {};
	struct colo_offset *o;
	struct colo_rewrites n = {};
	int prot = protected();
	int r = colo_parse(skb, &p);

	count(C_TAP_OUT_PKTS, 1);
	count(C_TAP_OUT_BYTES, skb->len);
	if (r == COLO_PARSE_NON_IP)
		count(C_NON_IP, 1);
	else if (r == COLO_PARSE_IP6_EXT)
		count(C_IP6_EXT, 1);
	if (r == COLO_PARSE_TCP) {
		key_out(&k, &p);
		if ((p.flags & TCPF_SYN) && !(p.flags & TCPF_RST)) {
			if (prot)
				learn(skb, &p, 1);
			else
				offsets.delete(&k);  /* after failover new connections run unrewritten */
		}
		/* While protected the comparator reads each side relative to its own ISN, so the
		 * SVM's output stays in its own sequence space (its SYN-ACK may leave before the
		 * PVM's ISN is known; rewriting only later segments would make one flow use two
		 * spaces). After failover the clients see it: then old connections are shifted. */
		o = prot ? 0 : offsets.lookup(&k);
		if (!prot && !o)
			o = carried.lookup(&k);
		if (paired(o)) {
			from_vm(skb, &p, o, &n);
			COUNT_REWRITES(&n);
		}
	}
	if (!prot)
		return TC_ACT_OK;
	/* The primary takes as the SVM's output only what comes from this host's MAC. */
	if (colo_store_mac(skb, 6, FWD_MAC) < 0) {
		count(C_REDIRECT_FAIL, 1);
		return TC_ACT_SHOT;
	}
	r = bpf_redirect(FWD_IFINDEX, 0);
	if (r != TC_ACT_REDIRECT)
		count(C_REDIRECT_FAIL, 1);
	return r;
}
