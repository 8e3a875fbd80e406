/*
 * The floor of one NFQUEUE hop on this machine: a consumer that does nothing but accept
 * each queued packet at once (libnetfilter_queue, blocking recv, one verdict per packet,
 * whole GSO packets copied as the proxy does). bench_proxy.py --floor measures the
 * request latency through it in the same run as the direct path and the proxy: no
 * implementation of a queue-holding proxy can add less than this hop, before any
 * comparison and before waiting for the SVM's twin.
 *
 *   cc -O2 -o nfq_floor nfq_floor.c -lnetfilter_queue && nfq_floor QUEUE
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa,
                     void *data) {
    (void)msg; (void)data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (ph == NULL)
        return 0;
    return nfq_set_verdict(qh, ntohl(ph->packet_id), NF_ACCEPT, 0, NULL);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s QUEUE_NUMBER\n", argv[0]);
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
    static char buf[256 * 1024];
    int fd = nfq_fd(h);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n >= 0)
            nfq_handle_packet(h, buf, (int)n);
        else if (errno != ENOBUFS && errno != EINTR) {
            perror("recv");
            return 1;
        }
    }
}
