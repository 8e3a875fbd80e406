/* Primary host: mirror the PVM's input onto the forward link, take the SVM's output off it.
 *
 * -DFWD_IFINDEX=n (forward link), -DVM_MAC=0x525400c01001 (the VMs' shared MAC),
 * -DFWD_MAC=0x... (this host's forward-link MAC), -DPEER_MAC=0x... (the secondary host's),
 * -DUPLINK_IFINDEX=n (the host's port toward the clients; 0: none).
 * The secondary trusts what comes over the forward link from this host's MAC (ISN copies,
 * carried-flow announcements), and the comparator trusts what comes from the secondary's
 * MAC as the SVM's output; so nothing a LAN host sends may reach the link with those.
 * colo_mirror:  tc egress of the PVM's tap: every frame the bridge delivers to the PVM that
 *               is client traffic for the VM (client_frame) is cloned onto the forward
 *               link (the secondary redirects it into the SVM); others are counted.
 * colo_pvm_out: tc ingress of the PVM's tap: copies of the PVM's SYN and SYN-ACK segments
 *               go to the secondary too (IPv4 and IPv6), with this host's forward-link MAC
 *               as their source; the secondary learns the PVM's ISN from them.
 * colo_svm_sock: socket filter of the comparator's packet socket on the forward link: only
 *               the secondary host's frames (its MAC) are the SVM's output. Packet taps
 *               run before tc, so this, not colo_svm_in, keeps others from the comparator.
 * colo_svm_in:  tc ingress of the forward link: the SVM's output, already copied to the
 *               comparator's packet socket (taps run before tc), is dropped here so that
 *               it never reaches a stack or the LAN. The secondary's challenges (ethertype
 *               0x88B5, from its MAC) go up to the announcer's socket. Except, with an
 *               uplink (-DUPLINK_IFINDEX=n), a copy of the SVM's own ARP requests and IPv6
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

/* Whether a frame the bridge delivers to the PVM is client traffic for the VM: the only
 * frames the mirror carries.
 * - Untagged IPv4, IPv6 or ARP: the only frames a guest's network stack acts on (the lab's
 *   guest, and any guest without VLANs or other layer-3 protocols inside; their output is
 *   not compared either, docs/PROXY.md). Never our own ethertype 0x88B5.
 * - To the VM's MAC, or to a group address (broadcast: ARP requests; multicast: neighbour
 *   solicitations and groups the guest may have joined, which it filters itself, the same
 *   in both VMs). Unicast to another MAC (a bridge flooding an unknown destination) is
 *   dropped by the guest.
 * - Not from the VM's MAC nor either host's forward-link MAC, nor from a group address:
 *   no client sends with those, and on the secondary the first two mean "the primary
 *   host's own frame" (ISN copies), so a LAN host using them is forging.
 * A refused frame still reaches the PVM (only the mirror is decided here); if it ever
 * changed the PVM's state the outputs would differ and a checkpoint would follow. */
static __always_inline int client_frame(struct __sk_buff *skb)
{
	struct ethhdr eth;
	u64 src;

	if (skb->vlan_present || bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return 0;
	if (eth.h_proto != bpf_htons(ETH_P_IP) && eth.h_proto != bpf_htons(COLO_ETH_P_IPV6) &&
	    eth.h_proto != bpf_htons(ETH_P_ARP))
		return 0;
	if (!(eth.h_dest[0] & 1) && colo_mac(eth.h_dest) != (u64)(VM_MAC))
		return 0;
	src = colo_mac(eth.h_source);
	return !(eth.h_source[0] & 1) && src != (u64)(VM_MAC) && src != (u64)(FWD_MAC) &&
	       src != (u64)(PEER_MAC);
}

int colo_mirror(struct __sk_buff *skb)
{
	if (!protected())
		return TC_ACT_OK;
	if (!client_frame(skb)) {
		count(C_MIRROR_REFUSED, 1);
		return TC_ACT_OK;
	}
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
	if (colo_parse(skb, &p) != COLO_PARSE_TCP || !(p.flags & TCPF_SYN) || (p.flags & TCPF_RST))
		return TC_ACT_OK;
	/* The copy leaves with this host's forward-link MAC as its source, which the mirror
	 * never carries: the secondary learns ISNs from that MAC only. */
	if (colo_store_mac(skb, 6, FWD_MAC) < 0) {
		count(C_CLONE_FAIL, 1);
		return TC_ACT_OK;
	}
	if (bpf_clone_redirect(skb, FWD_IFINDEX, 0) == 0)
		count(C_ISN_CLONES, 1);
	else
		count(C_CLONE_FAIL, 1);
	/* The original goes on to the clients with the PVM's own source again (the clone has
	 * its own copy of the header by now: a write to a cloned skb copies it first). */
	if (bpf_skb_store_bytes(skb, 6, p.eth.h_source, 6, 0) < 0)
		return TC_ACT_SHOT;  /* never to the LAN with our MAC; TCP resends it */
	return TC_ACT_OK;
}

/* An ARP request, or an ICMPv6 neighbour solicitation right behind the fixed IPv6 header. */
static __always_inline int solicits(struct __sk_buff *skb, const struct ethhdr *eth)
{
	u16 op;
	u8 nh, type;

	if (eth->h_proto == bpf_htons(ETH_P_ARP))  /* oper: 6 bytes into the ARP header */
		return bpf_skb_load_bytes(skb, ETH_HLEN + 6, &op, 2) == 0 && op == bpf_htons(1);
	if (eth->h_proto != bpf_htons(COLO_ETH_P_IPV6) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + 6, &nh, 1) < 0 || nh != 58)  /* ICMPv6 */
		return 0;
	return bpf_skb_load_bytes(skb, ETH_HLEN + COLO_IP6_HLEN, &type, 1) == 0 && type == 135;
}

int colo_svm_sock(struct __sk_buff *skb)
{
	unsigned char src[6];

	if (bpf_skb_load_bytes_relative(skb, 6, src, 6, BPF_HDR_START_MAC) < 0 ||
	    colo_mac(src) != (u64)(PEER_MAC)) {
		count(C_SVM_FOREIGN, 1);
		return 0;
	}
	if (skb->protocol == bpf_htons(COLO_ETH_P_CARRY))
		return 0;  /* the secondary's challenge: the announcer's, not SVM output */
	return -1;  /* the whole frame */
}

int colo_svm_in(struct __sk_buff *skb)
{
	struct ethhdr eth;

	/* Another MAC's frame: colo_svm_sock kept it from the comparator and counted it. */
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0 ||
	    colo_mac(eth.h_source) != (u64)(PEER_MAC))
		return TC_ACT_SHOT;
	if (eth.h_proto == bpf_htons(COLO_ETH_P_CARRY))
		return TC_ACT_OK;  /* up to the announcer's socket (bound to this ethertype) */
	count(C_SVM_OUT_PKTS, 1);
	count(C_SVM_OUT_BYTES, skb->len);
#if UPLINK_IFINDEX
	if (solicits(skb, &eth)) {
		/* The secondary sent it with its own MAC; on the LAN it is the VM's request. */
		if (colo_store_mac(skb, 6, VM_MAC) == 0 &&
		    bpf_clone_redirect(skb, UPLINK_IFINDEX, 0) == 0)
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
