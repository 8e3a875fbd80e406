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
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "colo.h"
#include "parse.h"

/* Map definitions and their .lookup() calls must be in the main file: bcc rewrites
 * only that file, so these few lines are repeated in secondary.bpf.c. */
BPF_PERCPU_ARRAY(counters, u64, C_MAX);
BPF_ARRAY(mode, u32, 1);

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

int colo_svm_in(struct __sk_buff *skb)
{
	count(C_SVM_OUT_PKTS, 1);
	count(C_SVM_OUT_BYTES, skb->len);
	return TC_ACT_SHOT;
}
