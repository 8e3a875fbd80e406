// Random loss on one device's egress, for fault campaigns (colo_lab/chaos/loss.py).
// This kernel has no netem, and iptables never sees the forward link's frames: they are
// redirected by the proxy's tc programs (bpf_clone_redirect), past netfilter. A tc
// program on the sending end's egress sees them, redirected frames included.
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

// LOSS_PER_MILLION: -D flag, the drop probability in parts per million.
int chaos_loss(struct __sk_buff *skb)
{
    if (bpf_get_prandom_u32() % 1000000 < LOSS_PER_MILLION)
        return TC_ACT_SHOT;
    return TC_ACT_UNSPEC; // on to the next filter (the proxy's, if any)
}
