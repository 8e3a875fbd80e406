/* Primary host: mirror the PVM's input onto the forward link, take the SVM's output off it.
 *
 * -DFWD_IFINDEX=n (forward link), -DVM_MAC=0x525400c01001 (the VMs' shared MAC).
 * colo_mirror:  tc egress of the PVM's tap: every frame the bridge delivers to the PVM is
 *               cloned onto the forward link (the secondary redirects it into the SVM).
 * colo_pvm_out: tc ingress of the PVM's tap: copies of the PVM's SYN and SYN-ACK segments
 *               go to the secondary too (IPv4 and IPv6), which learns the PVM's ISN from them.
 * colo_svm_in:  tc ingress of the forward link: the SVM's output, already copied to the
 *               comparator's packet socket (taps run before tc), is dropped here so that
 *               it never reaches a stack or the LAN.
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

static __always_inline void count_rewrites(const struct colo_rewrites *n)
{
	if (n->ack)
		count(C_ACK_REWRITES, n->ack);
	if (n->sack)
		count(C_SACK_REWRITES, n->sack);
	if (n->tsecr)
		count(C_TSECR_REWRITES, n->tsecr);
	if (n->seq)
		count(C_SEQ_REWRITES, n->seq);
	if (n->tsval)
		count(C_TSVAL_REWRITES, n->tsval);
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

int colo_svm_in(struct __sk_buff *skb)
{
	count(C_SVM_OUT_PKTS, 1);
	count(C_SVM_OUT_BYTES, skb->len);
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
		count_rewrites(&n);
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
		count_rewrites(&n);
	}
	return TC_ACT_OK;
}
