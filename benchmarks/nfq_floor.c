/*
 * The floor of a queue-holding proxy on this machine, for bench_proxy.py --floor.
 *
 *   nfq_floor QUEUE              accept each queued PVM packet at once: one NFQUEUE hop
 *   nfq_floor QUEUE FORWARD_IF   hold each PVM packet of a TCP flow until the SVM's frames
 *                                arriving on FORWARD_IF (an AF_PACKET socket, as
 *                                colo-proxy reads them) have carried the flow's stream up
 *                                to that packet's end
 *
 * The hold counts by sequence number, per flow (the VM's output direction; the client's
 * is not queued), each side relative to its own ISN as the comparator does (while
 * protected the SVM's output is not rewritten: docs/PROXY.md). So segmentation,
 * retransmissions and several connections at once never release a packet early or strand
 * one, and a bulk flow runs as it would through a proxy that releases each packet as soon
 * as the SVM has sent its bytes. Packets without payload (ACKs, FIN) wait behind the
 * flow's held ones, as in the comparator's arrival order; a flow whose PVM ISN was not
 * seen (begun before this program) is passed.
 *
 * No comparison, no Python: whatever colo-proxy adds beyond these two figures is its own
 * cost; what they add is the cost of the design on this machine (the hop, and waiting for
 * the SVM's twin, whose server shares the CPUs). Not a proxy: it checks nothing.
 *
 *   cc -O2 -o nfq_floor nfq_floor.c -lnetfilter_queue
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/netfilter.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#define NO_TOP (-((int64_t)1 << 62))
#define NFLOWS 4096 /* open addressing, never deleted: a benchmark run makes a few dozen */

typedef struct {
    uint32_t id;
    int64_t end; /* stream offset (from the PVM's ISN) this packet needs the SVM to reach */
} held_t;

typedef struct {
    uint8_t used, p_known, s_known;
    uint8_t key[12]; /* saddr, daddr, sport, dport of the VM's output */
    uint32_t p_isn, s_isn;
    int64_t p_top, s_top; /* highest stream end seen from each side */
    held_t *held;
    size_t h0, nh, cap;
} flow_t;

static flow_t flows[NFLOWS];

typedef struct {
    const uint8_t *key;
    uint32_t seq;
    uint8_t flags;
    unsigned n; /* TCP payload bytes */
} tcp_t;

/* An IPv4 TCP packet's fields; 0 for anything else (accepted at once). A GSO packet's IP
 * total length may be 0 or stale: the payload is the bytes we have. */
static int parse(const unsigned char *p, int n, tcp_t *t) {
    if (n < 40 || (p[0] >> 4) != 4 || p[9] != 6)
        return 0;
    unsigned ihl = (p[0] & 15u) * 4;
    if ((int)(ihl + 20) > n)
        return 0;
    unsigned hdr = ihl + (p[ihl + 12] >> 4) * 4u;
    if ((int)hdr > n)
        return 0;
    t->key = p + 12;
    memcpy(&t->seq, p + ihl + 4, 4);
    t->seq = ntohl(t->seq);
    t->flags = p[ihl + 13];
    t->n = (unsigned)n - hdr;
    return 1;
}

static flow_t *lookup(const uint8_t *key) {
    uint32_t h = 2166136261u;
    for (int i = 0; i < 12; i++)
        h = (h ^ key[i]) * 16777619u;
    for (unsigned k = 0; k < NFLOWS; k++) {
        flow_t *f = &flows[(h + k) % NFLOWS];
        if (!f->used) {
            f->used = 1;
            memcpy(f->key, key, 12);
            f->p_top = f->s_top = NO_TOP;
            return f;
        }
        if (!memcmp(f->key, key, 12))
            return f;
    }
    return NULL;
}

/* The comparator's unwrapping: near ref, by the signed 32-bit distance. */
static int64_t offset(uint32_t seq, uint32_t isn, int64_t ref) {
    if (ref == NO_TOP)
        ref = 0;
    return ref + (int32_t)(seq - isn - (uint32_t)ref);
}

/* A side's stream end after this packet (its SYN teaches the ISN); NO_TOP if unknown. */
static int64_t see(flow_t *f, const tcp_t *t, int svm) {
    uint8_t *known = svm ? &f->s_known : &f->p_known;
    uint32_t *isn = svm ? &f->s_isn : &f->p_isn;
    int64_t *top = svm ? &f->s_top : &f->p_top;
    if (t->flags & 0x02) { /* SYN: a new connection on these addresses starts over */
        *known = 1;
        *isn = t->seq;
        *top = 0;
        return 0;
    }
    if (!*known)
        return NO_TOP;
    int64_t end = offset(t->seq, *isn, *top) + t->n;
    if (end > *top)
        *top = end;
    return end;
}

static struct nfq_q_handle *qh;
static int waiting_for_svm;

static int hold(flow_t *f, uint32_t id, int64_t end) {
    if (f->nh == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 64;
        held_t *h = realloc(f->held, cap * sizeof *h);
        if (h == NULL)
            return -1;
        f->held = h;
        f->cap = cap;
    }
    f->held[f->nh++] = (held_t){id, end};
    return 0;
}

static void release(flow_t *f) {
    while (f->h0 < f->nh && f->s_known && f->held[f->h0].end <= f->s_top)
        nfq_set_verdict(qh, f->held[f->h0++].id, NF_ACCEPT, 0, NULL);
    if (f->h0 == f->nh)
        f->h0 = f->nh = 0;
}

static int on_packet(struct nfq_q_handle *q, struct nfgenmsg *msg, struct nfq_data *nfa,
                     void *data) {
    (void)msg; (void)data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (ph == NULL)
        return 0;
    uint32_t id = ntohl(ph->packet_id);
    unsigned char *p;
    int n = nfq_get_payload(nfa, &p);
    tcp_t t;
    flow_t *f = waiting_for_svm && parse(p, n, &t) ? lookup(t.key) : NULL;
    if (f == NULL)
        return nfq_set_verdict(q, id, NF_ACCEPT, 0, NULL);
    int64_t end = see(f, &t, 0);
    if (end == NO_TOP)
        return nfq_set_verdict(q, id, NF_ACCEPT, 0, NULL);
    /* No payload: behind the flow's held packets, else at once. */
    if (t.n == 0)
        end = f->h0 < f->nh ? f->held[f->nh - 1].end : NO_TOP;
    if (end == NO_TOP || (f->h0 == f->nh && f->s_known && end <= f->s_top))
        return nfq_set_verdict(q, id, NF_ACCEPT, 0, NULL);
    if (hold(f, id, end) < 0)
        return nfq_set_verdict(q, id, NF_ACCEPT, 0, NULL);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: %s QUEUE_NUMBER [FORWARD_IF]\n", argv[0]);
        return 2;
    }
    struct nfq_handle *h = nfq_open();
    if (h == NULL) {
        perror("nfq_open");
        return 1;
    }
    qh = nfq_create_queue(h, (unsigned)atoi(argv[1]), &on_packet, NULL);
    if (qh == NULL) {
        perror("nfq_create_queue (is another process bound to the queue?)");
        return 1;
    }
    if (nfq_set_mode(qh, NFQNL_COPY_PACKET, 0xffff) < 0 ||
        nfq_set_queue_flags(qh, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO) < 0) {
        perror("configuring the queue");
        return 1;
    }
    /* Socket buffers as colo-proxy sets them: a lost SVM frame would strand PVM packets. */
    int rcvbuf = 16 << 20;
    setsockopt(nfq_fd(h), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf);
    struct pollfd fds[2] = {{.fd = nfq_fd(h), .events = POLLIN}, {.fd = -1, .events = POLLIN}};
    if (argc == 3) {
        int s = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_ALL));
        struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
                                  .sll_ifindex = (int)if_nametoindex(argv[2])};
        int one = 1;
        if (s < 0 || sll.sll_ifindex == 0 ||
            setsockopt(s, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0 ||
            setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0 ||
            bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) {
            perror("packet socket on the forward link");
            return 1;
        }
        fds[1].fd = s;
        waiting_for_svm = 1;
    }
    static char buf[256 * 1024];
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        if (poll(fds, 2, -1) < 0 && errno != EINTR) {
            perror("poll");
            return 1;
        }
        if (fds[0].revents & POLLIN) {
            ssize_t n = recv(fds[0].fd, buf, sizeof buf, MSG_DONTWAIT);
            if (n >= 0)
                nfq_handle_packet(h, buf, (int)n);
        }
        if (fds[1].revents & POLLIN) {
            ssize_t n = recv(fds[1].fd, buf, sizeof buf, MSG_DONTWAIT);
            tcp_t t;
            flow_t *f = n > 0 && parse((unsigned char *)buf, (int)n, &t) ? lookup(t.key) : NULL;
            if (f != NULL && see(f, &t, 1) != NO_TOP)
                release(f);
        }
    }
}
