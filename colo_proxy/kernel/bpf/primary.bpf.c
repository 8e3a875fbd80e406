/* Primary host: mirror the PVM's input onto the forward link, take the SVM's output off it.
 *
 * -DFWD_IFINDEX=n (forward link), -DVM_MAC=0x525400c01001 (the VMs' shared MAC),
 * -DUPLINK_IFINDEX=n (the host's port toward the clients; 0: none).
 * colo_mirror:  tc egress of the PVM's tap: every frame the bridge delivers to the PVM is
 *               cloned onto the forward link (the secondary redirects it into the SVM).
 * colo_pvm_out: tc ingress of the PVM's tap: copies of the PVM's SYN and SYN-ACK segments
 *               go to the secondary too (IPv4 and IPv6), which learns the PVM's ISN from them.
 * colo_svm_in:  tc ingress of the forward link: the SVM's output, already copied to the
 *               comparator's packet socket (taps run before tc), is dropped here so that
 *               it never reaches a stack or the LAN. Except, with an uplink
 *               (-DUPLINK_IFINDEX=n), a copy of the SVM's own ARP requests and IPv6
 *               neighbour solicitations goes out to the LAN: the SVM resolves its
 *               neighbours itself, and the answers come back to it through the mirror
 *               (they are addressed to the MAC both VMs share). Without this the SVM
 *               heard an answer only when it happened to come while its own request was
 *               pending (the answer to the PVM's), fell behind and caused a "timeout"
 *               checkpoint. A request changes no state in a client that a PVM's identical
 *               request would not.
 * colo_up_in, colo_up_eg: tc ingress and egress of the host's uplink (optional). Flows
 *               carried over a role swap: this host's VM was the SVM, and connections it
 *               opened after the last checkpoint before the failover run in its own
 *               sequence and timestamp spaces, while their clients use the old PVM's.
 *               The old secondary proxy hands their offsets over (`carried`); they are
 *               moved between the spaces at the host's edge, so that everything inside
 *               (mirror, queue, comparator, the new SVM) sees the VM's spaces only. A
 *               SYN on such addresses is a new connection: the entry goes.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "colo.h"
#include "parse.h"
#include "rewrite.h"

/* Map definitions and their .lookup() calls must be in the main file: bcc rewrites
 * only that file, so these few lines are repeated in secondary.bpf.c. */
BPF_PERCPU_ARRAY(counters, u64, C_MAX);
BPF_ARRAY(mode, u32, 1);
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

int colo_mirror(struct __sk_buff *skb)
{
	if (!protected())
		return TC_ACT_OK;
	if (bpf_clone_redirect(skb, FWD_IFINDEX, 0) == 0) {
		count(C_MIRROR_PKTS, 1);
		count(C_MIRROR_BYTES, skb->len);
	} else {
		count(C_CLONE_FAIL, 1);
	}
	return TC_ACT_OK;
}

int colo_pvm_out(struct __sk_buff *skb)
{
	struct colo_pkt p = {};

	if (!protected())
		return TC_ACT_OK;
	if (colo_parse(skb, &p) == COLO_PARSE_TCP && (p.flags & TCPF_SYN) && !(p.flags & TCPF_RST)) {
		if (bpf_clone_redirect(skb, FWD_IFINDEX, 0) == 0)
			count(C_ISN_CLONES, 1);
		else
			count(C_CLONE_FAIL, 1);
	}
	return TC_ACT_OK;
}

/* An ARP request, or an ICMPv6 neighbour solicitation right behind the fixed IPv6 header,
 * sent by the VMs' MAC. */
static __always_inline int vm_solicits(struct __sk_buff *skb)
{
	struct ethhdr eth;
	u16 op;
	u8 nh, type;

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0 || !colo_mac_is_vm(eth.h_source))
		return 0;
	if (eth.h_proto == bpf_htons(ETH_P_ARP))  /* oper: 6 bytes into the ARP header */
		return bpf_skb_load_bytes(skb, ETH_HLEN + 6, &op, 2) == 0 && op == bpf_htons(1);
	if (eth.h_proto != bpf_htons(COLO_ETH_P_IPV6) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + 6, &nh, 1) < 0 || nh != 58)  /* ICMPv6 */
		return 0;
	return bpf_skb_load_bytes(skb, ETH_HLEN + COLO_IP6_HLEN, &type, 1) == 0 && type == 135;
}

int colo_svm_in(struct __sk_buff *skb)
{
	count(C_SVM_OUT_PKTS, 1);
	count(C_SVM_OUT_BYTES, skb->len);
#if UPLINK_IFINDEX
	if (vm_solicits(skb)) {
		if (bpf_clone_redirect(skb, UPLINK_IFINDEX, 0) == 0)
			count(C_SVM_SOLICITS, 1);
		else
			count(C_CLONE_FAIL, 1);
	}
#endif
	return TC_ACT_SHOT;
}

/* A carried flow's entry for this segment (key by `in`: toward the VM), NULL if none; a
 * SYN removes it (the addresses start a new connection, in one space). */
static __always_inline struct colo_offset *carried_flow(const struct colo_pkt *p, int in)
{
	struct colo_flow k = {};
	struct colo_offset *o;

	if (in)
		key_in(&k, p);
	else
		key_out(&k, p);
	o = carried.lookup(&k);
	if (o && (p->flags & TCPF_SYN)) {
		carried.delete(&k);
		return 0;
	}
	return o;
}

int colo_up_in(struct __sk_buff *skb)
{
	struct colo_pkt p = {};
	struct colo_rewrites n = {};
	struct colo_offset *o;

	if (colo_parse(skb, &p) != COLO_PARSE_TCP)
		return TC_ACT_OK;
	o = carried_flow(&p, 1);
	if (o && (p.flags & TCPF_ACK)) {
		to_vm(skb, &p, o, &n);
		COUNT_REWRITES(&n);
	}
	return TC_ACT_OK;
}

int colo_up_eg(struct __sk_buff *skb)
{
	struct colo_pkt p = {};
	struct colo_rewrites n = {};
	struct colo_offset *o;

	if (colo_parse(skb, &p) != COLO_PARSE_TCP)
		return TC_ACT_OK;
	o = carried_flow(&p, 0);
	if (o) {
		from_vm(skb, &p, o, &n);
		COUNT_REWRITES(&n);
	}
	return TC_ACT_OK;
}
