/*
 * The floor of a queue-holding proxy on this machine, for bench_proxy.py --floor.
 *
 *   nfq_floor QUEUE              accept each queued PVM packet at once: one NFQUEUE hop
 *   nfq_floor QUEUE FORWARD_IF   hold each PVM packet that carries TCP payload until the
 *                                SVM frames arriving on FORWARD_IF (an AF_PACKET socket,
 *                                as colo-proxy reads them) have carried as many TCP
 *                                payload bytes in all as the PVM had up to its end
 *                                (segmentation differs between the replicas; the
 *                                benchmark runs one connection at a time)
 *
 * No comparison, no flow table, no Python: whatever colo-proxy adds beyond these two
 * figures is its own cost; what they add is the cost of the design on this machine
 * (the hop, and waiting for the SVM's twin). Not a proxy: it checks nothing.
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

#define HELD_MAX 65536
static uint32_t held_id[HELD_MAX];
static uint64_t held_end[HELD_MAX]; /* PVM payload bytes in all up to this packet's end */
static unsigned held_head, held_tail; /* FIFO of PVM packets waiting for SVM bytes */
static uint64_t pvm_bytes, svm_bytes;
static int waiting_for_svm;

/* TCP payload bytes of an IPv4 TCP packet (0 for anything else: accepted at once). A GSO
 * packet's IP total length may be 0 or stale: use the bytes we have. */
static unsigned tcp_payload(const unsigned char *p, int n) {
    if (n < 40 || (p[0] >> 4) != 4 || p[9] != 6)
        return 0;
    unsigned ihl = (p[0] & 15u) * 4;
    if ((int)(ihl + 20) > n)
        return 0;
    unsigned hdr = ihl + (p[ihl + 12] >> 4) * 4u;
    return (unsigned)n > hdr ? (unsigned)n - hdr : 0;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa,
                     void *data) {
    (void)msg; (void)data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (ph == NULL)
        return 0;
    uint32_t id = ntohl(ph->packet_id);
    unsigned char *p;
    int n = nfq_get_payload(nfa, &p);
    unsigned len = waiting_for_svm ? tcp_payload(p, n) : 0;
    pvm_bytes += len;
    if ((len == 0 && held_head == held_tail) || pvm_bytes <= svm_bytes ||
        held_tail - held_head >= HELD_MAX)
        return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
    held_id[held_tail % HELD_MAX] = id;
    held_end[held_tail % HELD_MAX] = pvm_bytes;
    held_tail++;
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
    struct nfq_q_handle *qh = nfq_create_queue(h, (unsigned)atoi(argv[1]), &on_packet, NULL);
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
            svm_bytes += n > 0 ? tcp_payload((unsigned char *)buf, (int)n) : 0;
            for (; held_head != held_tail && held_end[held_head % HELD_MAX] <= svm_bytes;
                 held_head++)
                nfq_set_verdict(qh, held_id[held_head % HELD_MAX], NF_ACCEPT, 0, NULL);
        }
    }
}
