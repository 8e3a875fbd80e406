/* The primary proxy's fast path: in-order TCP segments whose bytes match, in C.
 *
 * Theory of operation
 * -------------------
 * The comparator (colo_proxy/compare) is the only definition of what matches. It *lends*
 * a TCP flow to this module when at most one side is ahead of the matched offset, no
 * FIN/RST, same epoch, with the numbers it would use for the next packets (fp_facts) and
 * what it holds: the PVM packets still held, the SVM segments kept, each with its bytes
 * not yet matched (a bulk flow is in sync only between super-packets, so a lend that
 * waited for nothing held would come late or never). While lent, this module does for
 * that flow exactly what TcpFlow.primary/secondary do for one narrow kind of packet: IPv4 without
 * options, ACK set and no SYN/FIN/RST, each side's next in-order segment. It keeps the
 * same state the comparator would (matched offset, each side's top, the SVM's ACK, held
 * PVM packets with their ACK offsets, kept SVM segments) and releases held PVM packets on
 * the comparator's own condition (end <= matched, ACK offset <= SVM's ACK, arrival order).
 *
 * Anything else for a lent flow (another flag, out of order, a byte that differs, a
 * per-flow limit that the packet would cross, a packet held too long, a checkpoint) makes
 * this module give the flow back *before* the packet: a record with the whole state,
 * which the comparator installs (Comparator.take_back) before it sees the packet itself.
 * So every decision other than "next in-order bytes equal" is the comparator's, taken on
 * the state it would have had. A mismatch is never acted on here: the comparator finds it
 * again and reports its offset. Packets of flows not lent go to Python as they came.
 *
 * The socket half (fp_attach .. fp_decide) reads the NFQUEUE netlink socket and the SVM's
 * packet socket and sends every verdict, Python's included, so that one planner knows all
 * outstanding ids: a batch verdict up to X accepts every queued id <= X
 * (net/netfilter/nfnetlink_queue.c, nfqnl_recv_verdict_batch), so it is sent only over a
 * prefix of the queue that is all accepted.
 *
 * Errors (allocation, a socket error other than a would-block or a full buffer) return a
 * negative errno; the caller raises and the proxy fails closed like any other exception.
 */

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sched.h>
#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <linux/if_packet.h>

#include "fastpath.h"

#define NO_TOP (-((int64_t)1 << 62))
#define NO_ACK NO_TOP

enum { REC_PVM = 1, REC_SVM = 2, REC_BACK = 3 };
enum {
    FP_BACK_RECLAIM = 0, FP_BACK_FLAGS = 1, FP_BACK_ORDER = 2, FP_BACK_MISMATCH = 3,
    FP_BACK_LIMIT = 4, FP_BACK_TIMEOUT = 5, FP_BACK_OTHER = 6, FP_BACK_LAG = 7,
};
#define FP_INTR 16 /* fp_wait: a signal came; Python must run its handler */
#define FP_TAKEN 1
#define FP_SLOW 0

typedef struct {
    uint32_t id;
    int64_t end, aoff;
    double t;
    uint32_t dlen;   /* payload bytes, 0 for a pure ACK */
    uint8_t *data;   /* NULL once its bytes are matched */
    uint8_t gso;     /* a GSO super-packet (NFQA_SKB_GSO): the comparator may resegment it */
} held_t;

typedef struct {
    int64_t start;
    uint32_t dlen;
    uint8_t *data;
} kept_t;

typedef struct flow {
    struct flow *next;             /* in its hash bucket */
    struct flow *lnext, *lprev;    /* in the list of lent flows (timeouts, reclaim) */
    uint8_t key[12];
    uint32_t p_base, s_base, p_abase, s_abase;
    int64_t m, p_top, s_top, s_ack, p_amax, nbytes;
    double s_prog; /* when the SVM last sent new bytes while lent, -1 if not yet */
    held_t *held;
    int h0, nh;   /* live entries [h0, nh) */
    size_t ch;
    kept_t *kept;
    int k0, nk;
    size_t ck;
} flow_t;

#define NBUCKETS 4096

struct fp {
    flow_t *buckets[NBUCKETS];
    flow_t *lent;
    int nflows, max_flows, max_fp;
    int64_t max_fb;
    int held_total, kept_total;
    uint8_t *out;
    size_t out_len, out_cap;
    uint32_t *rel;
    size_t nrel, crel;
    fp_stats stats;
    /* sockets */
    int nfq_fd, svm_fd, wake_fd, ep, batch;
    uint16_t queue;
    uint8_t *rbuf;
    size_t rbuf_cap;
    /* verdict planner: every id read, in queue order */
    uint32_t *ids;
    uint8_t *st;
    size_t rcap, rhead, rtail; /* monotonic counts; index = count & (rcap - 1) */
    size_t pending_singles;
    /* Resegmenting: a flow whose oldest held packet is a GSO super-packet held lag seconds
     * goes back to the comparator (FP_BACK_LAG), which may send it to queue to_queue. */
    double lag;
    uint16_t to_queue;
    uint8_t *vbuf;
    size_t vlen, vcap;
};

/* ---- small helpers ------------------------------------------------------------------ */

static inline int32_t s32(uint32_t x) { return (int32_t)x; }

/* The comparator's unwrapping: ref + signed 32-bit distance of (x - base - ref). */
static inline int64_t unwrap(uint32_t x, uint32_t base, int64_t ref) {
    return ref + s32(x - base - (uint32_t)ref);
}

static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int grow(void **buf, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *p = realloc(*buf, n * elem);
    if (!p)
        return -ENOMEM;
    *buf = p;
    *cap = n;
    return 0;
}

static int out_put(fp_t *fp, const void *p, size_t n) {
    if (grow((void **)&fp->out, &fp->out_cap, fp->out_len + n, 1))
        return -ENOMEM;
    memcpy(fp->out + fp->out_len, p, n);
    fp->out_len += n;
    return 0;
}
#define PUT(fp, v) do { __typeof__(v) _v = (v); if (out_put((fp), &_v, sizeof _v)) return -ENOMEM; } while (0)

static int rel_put(fp_t *fp, uint32_t id) {
    if (grow((void **)&fp->rel, &fp->crel, fp->nrel + 1, sizeof(uint32_t)))
        return -ENOMEM;
    fp->rel[fp->nrel++] = id;
    return 0;
}

/* ---- the flow table ----------------------------------------------------------------- */

static unsigned hash_key(const uint8_t *k) {
    uint32_t h = 2166136261u;
    for (int i = 0; i < 12; i++)
        h = (h ^ k[i]) * 16777619u;
    return h & (NBUCKETS - 1);
}

static flow_t **find_slot(fp_t *fp, const uint8_t *key) {
    flow_t **pp = &fp->buckets[hash_key(key)];
    while (*pp && memcmp((*pp)->key, key, 12))
        pp = &(*pp)->next;
    return pp;
}

fp_t *fp_new(int max_flow_packets, int64_t max_flow_bytes, int max_flows) {
    fp_t *fp = calloc(1, sizeof *fp);
    if (!fp)
        return NULL;
    fp->max_fp = max_flow_packets;
    fp->max_fb = max_flow_bytes;
    fp->max_flows = max_flows;
    fp->nfq_fd = fp->svm_fd = fp->wake_fd = fp->ep = -1;
    return fp;
}

static void flow_free(flow_t *f) {
    for (int i = f->h0; i < f->nh; i++)
        free(f->held[i].data);
    for (int i = f->k0; i < f->nk; i++)
        free(f->kept[i].data);
    free(f->held);
    free(f->kept);
    free(f);
}

void fp_free(fp_t *fp) {
    if (!fp)
        return;
    while (fp->lent) {
        flow_t *n = fp->lent->lnext;
        flow_free(fp->lent);
        fp->lent = n;
    }
    if (fp->ep >= 0) {
        extern int close(int);
        close(fp->ep);
    }
    free(fp->out);
    free(fp->rel);
    free(fp->rbuf);
    free(fp->ids);
    free(fp->st);
    free(fp->vbuf);
    free(fp);
}

/* Read n bytes of a lend's state into dst, or fail: the layout is hand_back's. */
static int take(const uint8_t **p, const uint8_t *end, void *dst, size_t n) {
    if ((size_t)(end - *p) < n)
        return -EINVAL;
    memcpy(dst, *p, n);
    *p += n;
    return 0;
}
#define TAKE(p, end, v) do { if (take(&(p), (end), &(v), sizeof (v))) goto bad; } while (0)

/* The held PVM packets and kept SVM segments of a lend, as hand_back writes them. */
static int lend_state(flow_t *f, const uint8_t *p, size_t len) {
    const uint8_t *end = p + len;
    uint32_t nh, nk;
    if (!len)
        return 0;
    TAKE(p, end, nh);
    TAKE(p, end, nk);
    if (nh > (uint32_t)(len / 33) || nk > (uint32_t)(len / 12))
        goto bad;
    f->held = calloc(nh ? nh : 1, sizeof(held_t));
    f->kept = calloc(nk ? nk : 1, sizeof(kept_t));
    if (!f->held || !f->kept)
        return -ENOMEM;
    f->ch = nh ? nh : 1;
    f->ck = nk ? nk : 1;
    for (uint32_t i = 0; i < nh; i++) {
        held_t *h = &f->held[f->nh];
        TAKE(p, end, h->id);
        TAKE(p, end, h->end);
        TAKE(p, end, h->aoff);
        TAKE(p, end, h->t);
        TAKE(p, end, h->dlen);
        TAKE(p, end, h->gso);
        f->nh++;
        if (h->dlen) {
            if ((size_t)(end - p) < h->dlen || !(h->data = malloc(h->dlen)))
                goto bad;
            memcpy(h->data, p, h->dlen);
            p += h->dlen;
            f->nbytes += h->dlen;
        }
    }
    for (uint32_t i = 0; i < nk; i++) {
        kept_t *k = &f->kept[f->nk];
        TAKE(p, end, k->start);
        TAKE(p, end, k->dlen);
        if ((size_t)(end - p) < k->dlen || !k->dlen || !(k->data = malloc(k->dlen)))
            goto bad;
        f->nk++;
        memcpy(k->data, p, k->dlen);
        p += k->dlen;
        f->nbytes += k->dlen;
    }
    return p == end ? 0 : -EINVAL;
bad:
    return -EINVAL;
}

int fp_lend(fp_t *fp, const uint8_t *key, const fp_facts *x, const uint8_t *state,
            size_t len) {
    flow_t **pp = find_slot(fp, key);
    if (*pp)
        return -EEXIST;
    if (fp->nflows >= fp->max_flows)
        return 0; /* not lent: the comparator keeps it */
    flow_t *f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    int rc = lend_state(f, state, len);
    if (rc < 0) {
        flow_free(f);
        return rc;
    }
    memcpy(f->key, key, 12);
    f->p_base = x->p_base;
    f->s_base = x->s_base;
    f->p_abase = x->p_abase;
    f->s_abase = x->s_abase;
    f->m = x->matched;
    f->p_top = x->p_top;
    f->s_top = x->s_top;
    f->s_ack = x->s_ack;
    f->p_amax = x->p_amax;
    /* When the SVM last sent new bytes (the comparator's, -1 if never): a resegment check
     * of a packet held at the lend counts from it. */
    f->s_prog = x->s_prog;
    *pp = f;
    f->lnext = fp->lent;
    if (fp->lent)
        fp->lent->lprev = f;
    fp->lent = f;
    fp->nflows++;
    fp->held_total += f->nh;
    fp->kept_total += f->nk;
    fp->stats.lent++;
    return 1;
}

/* Give a flow back: one record with its whole state, then forget it. */
static int hand_back(fp_t *fp, flow_t **pp, int reason) {
    flow_t *f = *pp;
    uint8_t type = REC_BACK, r = (uint8_t)reason;
    uint32_t nh = (uint32_t)(f->nh - f->h0), nk = (uint32_t)(f->nk - f->k0);
    PUT(fp, type);
    PUT(fp, r);
    if (out_put(fp, f->key, 12))
        return -ENOMEM;
    PUT(fp, f->m);
    PUT(fp, f->p_top);
    PUT(fp, f->s_top);
    PUT(fp, f->s_ack);
    PUT(fp, f->p_amax);
    PUT(fp, f->s_prog);
    PUT(fp, nh);
    PUT(fp, nk);
    for (int i = f->h0; i < f->nh; i++) {
        held_t *h = &f->held[i];
        uint32_t dlen = h->data ? h->dlen : 0;
        PUT(fp, h->id);
        PUT(fp, h->end);
        PUT(fp, h->aoff);
        PUT(fp, h->t);
        PUT(fp, dlen);
        PUT(fp, h->gso);
        if (dlen && out_put(fp, h->data, dlen))
            return -ENOMEM;
    }
    for (int i = f->k0; i < f->nk; i++) {
        kept_t *k = &f->kept[i];
        PUT(fp, k->start);
        PUT(fp, k->dlen);
        if (out_put(fp, k->data, k->dlen))
            return -ENOMEM;
    }
    fp->held_total -= (int)nh;
    fp->kept_total -= (int)nk;
    *pp = f->next;
    if (f->lprev)
        f->lprev->lnext = f->lnext;
    else
        fp->lent = f->lnext;
    if (f->lnext)
        f->lnext->lprev = f->lprev;
    flow_free(f);
    fp->nflows--;
    fp->stats.handbacks[reason & 7]++;
    return 0;
}

int fp_reclaim_all(fp_t *fp, int reason) {
    while (fp->lent) {
        int rc = hand_back(fp, find_slot(fp, fp->lent->key), reason);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int fp_expire(fp_t *fp, double before) {
    flow_t *f = fp->lent;
    while (f) {
        flow_t *next = f->lnext;
        if (f->h0 < f->nh && f->held[f->h0].t <= before) {
            int rc = hand_back(fp, find_slot(fp, f->key), FP_BACK_TIMEOUT);
            if (rc < 0)
                return rc;
        }
        f = next;
    }
    return 0;
}

int fp_lent_flows(fp_t *fp) { return fp->nflows; }
int fp_held_packets(fp_t *fp) { return fp->held_total; }
int fp_kept_packets(fp_t *fp) { return fp->kept_total; }
fp_stats *fp_get_stats(fp_t *fp) { return &fp->stats; }

void fp_set_resegment(fp_t *fp, double lag, uint16_t to_queue) {
    fp->lag = lag;
    fp->to_queue = to_queue;
}

/* Arrival of the oldest held super-packet that is its flow's oldest held packet, or -1. */
/* From when a flow's resegment check counts (the comparator's TcpFlow.lag_since): the
 * later of its oldest held packet's arrival and the SVM's last new bytes. An SVM that is
 * late but still sending (it started its answer later than the PVM, its guest was
 * descheduled) is not stopped inside a super-packet; withdrawing then only turns the
 * rest of the download into one MSS per packet. */
static inline double lag_since(const flow_t *f) {
    double t = f->held[f->h0].t;
    return t > f->s_prog ? t : f->s_prog;
}

static double oldest_gso(fp_t *fp) {
    double t = -1.0;
    for (flow_t *f = fp->lent; f; f = f->lnext)
        if (f->h0 < f->nh && f->held[f->h0].gso && (t < 0 || lag_since(f) < t))
            t = lag_since(f);
    return t;
}

static int expire_gso(fp_t *fp, double before) {
    flow_t *f = fp->lent;
    while (f) {
        flow_t *next = f->lnext;
        if (f->h0 < f->nh && f->held[f->h0].gso && lag_since(f) <= before) {
            int rc = hand_back(fp, find_slot(fp, f->key), FP_BACK_LAG);
            if (rc < 0)
                return rc;
        }
        f = next;
    }
    return 0;
}

double fp_oldest(fp_t *fp) {
    double t = -1.0;
    if (!fp->held_total)
        return t;
    for (flow_t *f = fp->lent; f; f = f->lnext)
        if (f->h0 < f->nh && (t < 0 || f->held[f->h0].t < t))
            t = f->held[f->h0].t;
    return t;
}

const uint8_t *fp_out(fp_t *fp, size_t *len) {
    *len = fp->out_len;
    return fp->out;
}

const uint32_t *fp_released(fp_t *fp, size_t *n) {
    *n = fp->nrel;
    return fp->rel;
}

void fp_out_clear(fp_t *fp) {
    fp->out_len = 0;
    fp->nrel = 0;
}

/* ---- one packet --------------------------------------------------------------------- */

typedef struct {
    const uint8_t *key; /* 12 bytes: addresses and ports, the comparator's TCP key */
    uint32_t seq, ack;
    uint8_t flags;
    const uint8_t *data;
    uint32_t n;
    int simple; /* IPv4 without options: the only form taken */
} tcp_t;

/* 1 if `pkt` would reach a TcpFlow of the comparator under an IPv4 key, else 0. */
static int parse_tcp(const uint8_t *pkt, size_t len, tcp_t *t) {
    if (len < 40 || (pkt[0] >> 4) != 4 || pkt[9] != 6)
        return 0;
    unsigned ihl = (pkt[0] & 15u) * 4;
    unsigned tot = be16(pkt + 2);
    if (be16(pkt + 6) & 0x3FFF || ihl < 20 || tot > len || tot < ihl + 20)
        return 0;
    const uint8_t *th = pkt + ihl;
    unsigned doff = (th[12] >> 2) & 0x3C;
    if (doff < 20 || ihl + doff > tot)
        return 0;
    t->key = pkt + 12; /* src, dst, then the ports when ihl == 20 */
    t->simple = ihl == 20;
    t->seq = be32(th + 4);
    t->ack = be32(th + 8);
    t->flags = th[13];
    t->data = th + doff;
    t->n = tot - ihl - doff;
    return 1;
}

static int lookup(fp_t *fp, const uint8_t *pkt, size_t len, tcp_t *t, flow_t ***pp) {
    if (!fp->nflows || !parse_tcp(pkt, len, t))
        return 0;
    uint8_t key[12];
    memcpy(key, pkt + 12, 8);
    memcpy(key + 8, pkt + (pkt[0] & 15u) * 4, 4);
    *pp = find_slot(fp, key);
    return **pp != NULL;
}

/* Bytes [from, from + n) of the other side's stored segments equal `d`? The stored
 * segments are contiguous from before `from`. */
static int same_held(flow_t *f, int64_t from, const uint8_t *d, int64_t n) {
    for (int i = f->h0; i < f->nh && n > 0; i++) {
        held_t *h = &f->held[i];
        if (!h->data || h->end <= from)
            continue;
        int64_t start = h->end - h->dlen;
        int64_t off = from - start, k = h->end - from;
        if (k > n)
            k = n;
        if (memcmp(h->data + off, d, (size_t)k))
            return 0;
        d += k;
        from += k;
        n -= k;
    }
    return n == 0;
}

static int same_kept(flow_t *f, int64_t from, const uint8_t *d, int64_t n) {
    for (int i = f->k0; i < f->nk && n > 0; i++) {
        kept_t *k = &f->kept[i];
        int64_t end = k->start + k->dlen;
        if (end <= from)
            continue;
        int64_t off = from - k->start, c = end - from;
        if (c > n)
            c = n;
        if (memcmp(k->data + off, d, (size_t)c))
            return 0;
        d += c;
        from += c;
        n -= c;
    }
    return n == 0;
}

/* After `m` moved to m2: counts of what the comparator would drop or release. Read-only. */
static void settle_counts(flow_t *f, int64_t m2, int64_t sack, int *rel, int *kept_gone,
                          int64_t *bytes_gone) {
    *rel = 0;
    *kept_gone = 0;
    *bytes_gone = 0;
    for (int i = f->h0; i < f->nh; i++) {
        held_t *h = &f->held[i];
        if (h->data && h->end <= m2)
            *bytes_gone += h->dlen;
    }
    for (int i = f->h0; i < f->nh; i++) {
        held_t *h = &f->held[i];
        if (h->end > m2 || h->aoff > sack)
            break;
        (*rel)++;
    }
    for (int i = f->k0; i < f->nk; i++) {
        kept_t *k = &f->kept[i];
        if (k->start + k->dlen > m2)
            break;
        (*kept_gone)++;
        *bytes_gone += k->dlen;
    }
}

/* Commit m2: free matched bytes, drop matched SVM segments, release the held prefix. */
static int settle(fp_t *fp, flow_t *f, int64_t m2) {
    f->m = m2;
    for (int i = f->h0; i < f->nh; i++) {
        held_t *h = &f->held[i];
        if (h->data && h->end <= m2) {
            f->nbytes -= h->dlen;
            free(h->data);
            h->data = NULL;
        }
    }
    while (f->k0 < f->nk && f->kept[f->k0].start + f->kept[f->k0].dlen <= m2) {
        f->nbytes -= f->kept[f->k0].dlen;
        free(f->kept[f->k0].data);
        f->k0++;
        fp->kept_total--;
    }
    if (f->k0 == f->nk)
        f->k0 = f->nk = 0;
    while (f->h0 < f->nh && f->held[f->h0].end <= m2 && f->held[f->h0].aoff <= f->s_ack) {
        held_t *h = &f->held[f->h0];
        if (rel_put(fp, h->id))
            return -ENOMEM;
        free(h->data); /* NULL unless unmatched, which end <= m2 excludes */
        h->data = NULL;
        f->h0++;
        fp->held_total--;
        fp->stats.released++;
    }
    if (f->h0 == f->nh)
        f->h0 = f->nh = 0;
    return 0;
}

static int back_then_slow(fp_t *fp, flow_t **pp, int reason) {
    int rc = hand_back(fp, pp, reason);
    return rc < 0 ? rc : FP_SLOW;
}

/* A lent flow's next in-order plain ACK segment from one side: 1 with its stream offset;
 * otherwise FP_SLOW (the flow given back first if lent) or a negative errno. */
static int next_segment(fp_t *fp, const uint8_t *pkt, size_t len, int svm, tcp_t *t,
                        flow_t ***pp, int64_t *start) {
    if (!lookup(fp, pkt, len, t, pp))
        return FP_SLOW;
    flow_t *f = **pp;
    if (!t->simple)
        return back_then_slow(fp, *pp, FP_BACK_OTHER);
    if ((t->flags & 0x17) != 0x10) /* SYN, FIN, RST, or no ACK */
        return back_then_slow(fp, *pp, FP_BACK_FLAGS);
    *start = unwrap(t->seq, svm ? f->s_base : f->p_base, f->m);
    if (*start != (svm ? f->s_top : f->p_top))
        return back_then_slow(fp, *pp, FP_BACK_ORDER);
    return 1;
}

int fp_pvm(fp_t *fp, uint32_t id, const uint8_t *pkt, size_t len, double now, int gso) {
    tcp_t t;
    flow_t **pp;
    int64_t start;
    int rc = next_segment(fp, pkt, len, 0, &t, &pp, &start);
    if (rc != 1)
        return rc;
    flow_t *f = *pp;
    int64_t end = start + t.n;
    /* Bytes the SVM sent already (only one side can be ahead of the matched offset). */
    int64_t m2 = f->m;
    if (t.n && f->s_top > start) {
        int64_t k = f->s_top < end ? f->s_top - start : (int64_t)t.n;
        if (!same_kept(f, start, t.data, k))
            return back_then_slow(fp, pp, FP_BACK_MISMATCH);
        m2 = start + k;
    }
    int64_t aoff = unwrap(t.ack, f->p_abase, f->s_ack);
    /* Post-state size, checked before anything changes (the comparator's QUEUE_FULL). */
    held_t nh = {id, end, aoff, now, t.n, NULL, gso != 0};
    int rel, gone;
    int64_t bgone;
    settle_counts(f, m2, f->s_ack, &rel, &gone, &bgone);
    int all_before = rel == f->nh - f->h0;
    int new_out = all_before && end <= m2 && aoff <= f->s_ack;
    int64_t npk = (f->nh - f->h0) + (f->nk - f->k0) + 1 - rel - gone - new_out;
    int64_t nby = f->nbytes + t.n - bgone - (end <= m2 ? t.n : 0);
    if (npk > fp->max_fp || nby > fp->max_fb)
        return back_then_slow(fp, pp, FP_BACK_LIMIT);
    if (aoff > f->p_amax)
        f->p_amax = aoff;
    if (t.n) {
        f->p_top = end;
        nh.data = malloc(t.n);
        if (!nh.data)
            return -ENOMEM;
        memcpy(nh.data, t.data, t.n);
        f->nbytes += t.n;
    }
    if (grow((void **)&f->held, &f->ch, (size_t)f->nh + 1, sizeof(held_t))) {
        free(nh.data);
        return -ENOMEM;
    }
    f->held[f->nh++] = nh;
    fp->held_total++;
    fp->stats.pvm_packets++;
    return settle(fp, f, m2) < 0 ? -ENOMEM : FP_TAKEN;
}

int fp_svm(fp_t *fp, const uint8_t *pkt, size_t len, double now) {
    tcp_t t;
    flow_t **pp;
    int64_t start;
    int rc = next_segment(fp, pkt, len, 1, &t, &pp, &start);
    if (rc != 1)
        return rc;
    flow_t *f = *pp;
    int64_t end = start + t.n;
    int64_t m2 = f->m;
    if (t.n && f->p_top > start) {
        int64_t k = f->p_top < end ? f->p_top - start : (int64_t)t.n;
        if (!same_held(f, start, t.data, k))
            return back_then_slow(fp, pp, FP_BACK_MISMATCH);
        m2 = start + k;
    }
    int64_t aoff = unwrap(t.ack, f->s_abase, f->s_ack);
    int64_t sack = aoff > f->s_ack ? aoff : f->s_ack;
    int rel, gone;
    int64_t bgone;
    settle_counts(f, m2, sack, &rel, &gone, &bgone);
    int stays = t.n && end > m2;
    int64_t npk = (f->nh - f->h0) + (f->nk - f->k0) + stays - rel - gone;
    int64_t nby = f->nbytes + (stays ? t.n : 0) - bgone;
    if (npk > fp->max_fp || nby > fp->max_fb)
        return back_then_slow(fp, pp, FP_BACK_LIMIT);
    f->s_ack = sack;
    if (t.n) {
        f->s_top = end;
        f->s_prog = now;
    }
    if (stays) {
        kept_t k = {start, t.n, malloc(t.n)};
        if (!k.data)
            return -ENOMEM;
        memcpy(k.data, t.data, t.n);
        if (grow((void **)&f->kept, &f->ck, (size_t)f->nk + 1, sizeof(kept_t))) {
            free(k.data);
            return -ENOMEM;
        }
        f->kept[f->nk++] = k;
        f->nbytes += t.n;
        fp->kept_total++;
    }
    fp->stats.svm_packets++;
    return settle(fp, f, m2) < 0 ? -ENOMEM : FP_TAKEN;
}

/* ---- the sockets -------------------------------------------------------------------- */

#define NFNL_SUBSYS_QUEUE 3
#define NFQNL_MSG_PACKET 0
#define NFQNL_MSG_VERDICT 1
#define NFQNL_MSG_VERDICT_BATCH 3
#define NFQA_PACKET_HDR 1
#define NFQA_VERDICT_HDR 2
#define NFQA_PAYLOAD 10
#define NFQA_CAP_LEN 13
#define NFQA_SKB_INFO 14
#define NFQA_SKB_GSO 0x2
#define NF_QUEUE 3
#define RECV_BUF (256 * 1024)

enum { ID_HELD = 0, ID_ACCEPT = 1, ID_DROP = 2, ID_SENT = 3, ID_REQUEUE = 4 };

extern ssize_t recv(int, void *, size_t, int);
extern int close(int);

int fp_attach(fp_t *fp, int nfq_fd, uint16_t queue, int svm_fd, int wake_fd, int batch) {
    fp->nfq_fd = nfq_fd;
    fp->queue = queue;
    fp->svm_fd = svm_fd;
    fp->wake_fd = wake_fd;
    fp->batch = batch > 0 ? batch : 256;
    fp->rbuf = malloc(RECV_BUF);
    fp->rcap = 1 << 14;
    fp->ids = malloc(fp->rcap * sizeof(uint32_t));
    fp->st = malloc(fp->rcap);
    fp->ep = epoll_create1(EPOLL_CLOEXEC);
    if (!fp->rbuf || !fp->ids || !fp->st)
        return -ENOMEM;
    if (fp->ep < 0)
        return -errno;
    int fds[3] = {nfq_fd, svm_fd, wake_fd};
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 0)
            continue;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(fp->ep, EPOLL_CTL_ADD, fds[i], &ev) < 0)
            return -errno;
    }
    return 0;
}

/* Planner: every id read goes to the back of the ring, in the kernel's queue order. */
static int ring_push(fp_t *fp, uint32_t id) {
    size_t n = fp->rtail - fp->rhead;
    if (n == fp->rcap) {
        size_t cap = fp->rcap * 2;
        uint32_t *ids = malloc(cap * sizeof(uint32_t));
        uint8_t *st = malloc(cap);
        if (!ids || !st) {
            free(ids);
            free(st);
            return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
            ids[i] = fp->ids[(fp->rhead + i) & (fp->rcap - 1)];
            st[i] = fp->st[(fp->rhead + i) & (fp->rcap - 1)];
        }
        free(fp->ids);
        free(fp->st);
        fp->ids = ids;
        fp->st = st;
        fp->rcap = cap;
        fp->rhead = 0;
        fp->rtail = n;
    }
    size_t i = fp->rtail++ & (fp->rcap - 1);
    fp->ids[i] = id;
    fp->st[i] = ID_HELD;
    return 0;
}

/* Ids grow in serial-number order (RFC 1982, as nfq_id_after): binary search. */
static int ring_mark(fp_t *fp, uint32_t id, uint8_t state) {
    size_t lo = fp->rhead, hi = fp->rtail;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int32_t d = (int32_t)(fp->ids[mid & (fp->rcap - 1)] - id);
        if (d == 0) {
            uint8_t *s = &fp->st[mid & (fp->rcap - 1)];
            if (*s == ID_HELD) {
                *s = state;
                fp->pending_singles++;
            }
            return 0;
        }
        if (d < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0; /* not outstanding: decided already */
}

/* verdict: NF_ACCEPT (1), NF_DROP (0) or NF_QUEUE with a queue number in its high 16 bits. */
static int vput(fp_t *fp, uint32_t id, uint32_t verdict, int batch) {
    if (grow((void **)&fp->vbuf, &fp->vcap, fp->vlen + 32, 1))
        return -ENOMEM;
    uint8_t *p = fp->vbuf + fp->vlen;
    uint32_t len = 32;
    uint16_t type = (NFNL_SUBSYS_QUEUE << 8) | (batch ? NFQNL_MSG_VERDICT_BATCH : NFQNL_MSG_VERDICT);
    uint16_t flags = 1; /* NLM_F_REQUEST */
    uint32_t zero = 0;
    memcpy(p, &len, 4);
    memcpy(p + 4, &type, 2);
    memcpy(p + 6, &flags, 2);
    memcpy(p + 8, &zero, 4);
    memcpy(p + 12, &zero, 4);
    p[16] = 0; /* AF_UNSPEC */
    p[17] = 0; /* NFNETLINK_V0 */
    uint16_t q = htons(fp->queue);
    memcpy(p + 18, &q, 2);
    uint16_t alen = 12, atype = NFQA_VERDICT_HDR;
    memcpy(p + 20, &alen, 2);
    memcpy(p + 22, &atype, 2);
    uint32_t v = htonl(verdict), i = htonl(id);
    memcpy(p + 24, &v, 4);
    memcpy(p + 28, &i, 4);
    fp->vlen += 32;
    fp->stats.verdict_msgs++;
    return 0;
}

static int vsend(fp_t *fp) {
    size_t off = 0;
    while (off < fp->vlen) {
        /* Verdicts must not be lost: wait for room rather than drop one. */
        ssize_t n = send(fp->nfq_fd, fp->vbuf + off, fp->vlen - off, 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        off += (size_t)n;
    }
    fp->vlen = 0;
    return 0;
}

/* Singles first (drops before any batch that would pass over them), then one batch
 * verdict over the accepted prefix of the queue. */
static int ring_flush(fp_t *fp) {
    if (fp->pending_singles) {
        size_t head = fp->rhead;
        while (head < fp->rtail && fp->st[head & (fp->rcap - 1)] == ID_ACCEPT)
            head++;
        for (size_t k = head; k < fp->rtail && fp->pending_singles; k++) {
            uint8_t *s = &fp->st[k & (fp->rcap - 1)];
            if (*s == ID_ACCEPT || *s == ID_DROP || *s == ID_REQUEUE) {
                /* NF_QUEUE to the segmenting queue: nf_reinject queues the packet there
                 * (net/netfilter/nfnetlink_queue.c), segmented as that queue lacks
                 * NFQA_CFG_F_GSO (nfqnl_enqueue_packet -> skb_gso_segment). */
                uint32_t v = *s == ID_ACCEPT ? 1u
                           : *s == ID_DROP ? 0u
                           : (uint32_t)NF_QUEUE | ((uint32_t)fp->to_queue << 16);
                if (vput(fp, fp->ids[k & (fp->rcap - 1)], v, 0))
                    return -ENOMEM;
                *s = ID_SENT;
                fp->pending_singles--;
            }
        }
    }
    int have = 0;
    uint32_t last = 0;
    while (fp->rhead < fp->rtail) {
        size_t i = fp->rhead & (fp->rcap - 1);
        if (fp->st[i] == ID_ACCEPT) {
            last = fp->ids[i];
            have = 1;
            fp->pending_singles--;
        } else if (fp->st[i] != ID_SENT) {
            break;
        }
        fp->rhead++;
    }
    if (have && vput(fp, last, 1, 1))
        return -ENOMEM;
    return fp->vlen ? vsend(fp) : 0;
}

int fp_decide(fp_t *fp, const uint32_t *accept, size_t na, const uint32_t *drop, size_t nd) {
    for (size_t i = 0; i < nd; i++)
        ring_mark(fp, drop[i], ID_DROP);
    for (size_t i = 0; i < na; i++)
        ring_mark(fp, accept[i], ID_ACCEPT);
    return ring_flush(fp);
}

int fp_requeue(fp_t *fp, const uint32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++)
        ring_mark(fp, ids[i], ID_REQUEUE);
    return ring_flush(fp);
}

int fp_decide_all(fp_t *fp, int accept) {
    for (size_t k = fp->rhead; k < fp->rtail; k++) {
        uint8_t *s = &fp->st[k & (fp->rcap - 1)];
        if (*s == ID_HELD) {
            *s = accept ? ID_ACCEPT : ID_DROP;
            fp->pending_singles++;
        }
    }
    return ring_flush(fp);
}

int fp_outstanding(fp_t *fp) { return (int)(fp->rtail - fp->rhead); }

static int slow_pvm(fp_t *fp, uint32_t id, uint16_t hw, uint32_t cap, double t,
                    const uint8_t *p, uint32_t n, uint8_t gso) {
    uint8_t type = REC_PVM;
    PUT(fp, type);
    PUT(fp, id);
    PUT(fp, hw);
    PUT(fp, cap);
    PUT(fp, t);
    PUT(fp, n);
    PUT(fp, gso);
    fp->stats.slow_pvm++;
    return out_put(fp, p, n);
}

/* One netlink datagram of queued packets. */
static int nfq_message(fp_t *fp, const uint8_t *buf, size_t len, double now) {
    size_t off = 0;
    while (off + 16 <= len) {
        uint32_t mlen;
        uint16_t mtype;
        memcpy(&mlen, buf + off, 4);
        memcpy(&mtype, buf + off + 4, 2);
        if (mlen < 16 || off + mlen > len)
            break;
        if (mtype == ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET) && mlen >= 20) {
            size_t a = off + 20, end = off + mlen;
            int have_id = 0;
            uint32_t id = 0, cap = 0;
            uint16_t hw = 0;
            const uint8_t *payload = NULL;
            uint32_t plen = 0;
            int have_cap = 0;
            uint8_t gso = 0;
            while (a + 4 <= end) {
                uint16_t alen, atype;
                memcpy(&alen, buf + a, 2);
                memcpy(&atype, buf + a + 2, 2);
                if (alen < 4 || a + alen > end)
                    break;
                atype &= 0x3FFF;
                if (atype == NFQA_PACKET_HDR && alen >= 4 + 7) {
                    id = be32(buf + a + 4);
                    hw = be16(buf + a + 8);
                    have_id = 1;
                } else if (atype == NFQA_PAYLOAD) {
                    payload = buf + a + 4;
                    plen = alen - 4u;
                } else if (atype == NFQA_CAP_LEN && alen >= 8) {
                    cap = be32(buf + a + 4);
                    have_cap = 1;
                } else if (atype == NFQA_SKB_INFO && alen >= 8) {
                    gso = (be32(buf + a + 4) & NFQA_SKB_GSO) != 0;
                }
                a += (alen + 3u) & ~3u;
            }
            if (have_id) {
                if (ring_push(fp, id))
                    return -ENOMEM;
                if (!payload)
                    payload = buf, plen = 0;
                if (!have_cap)
                    cap = plen;
                int rc = FP_SLOW;
                if (cap <= plen) /* a truncated copy is the comparator's to judge */
                    rc = fp_pvm(fp, id, payload, plen, now, gso);
                else if (fp->nflows) {
                    tcp_t t;
                    flow_t **pp;
                    if (lookup(fp, payload, plen, &t, &pp))
                        rc = back_then_slow(fp, pp, FP_BACK_OTHER);
                }
                if (rc < 0)
                    return rc;
                if (rc == FP_SLOW && slow_pvm(fp, id, hw, cap, now, payload, plen, gso))
                    return -ENOMEM;
            }
        }
        off += (mlen + 3u) & ~3u;
    }
    return 0;
}

static int read_nfq(fp_t *fp, double now) {
    for (int k = 0; k < fp->batch; k++) {
        ssize_t n = recv(fp->nfq_fd, fp->rbuf, RECV_BUF, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            if (errno == ENOBUFS) {
                fp->stats.enobufs++;
                continue;
            }
            return -errno;
        }
        int rc = nfq_message(fp, fp->rbuf, (size_t)n, now);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int read_svm(fp_t *fp, double now) {
    for (int k = 0; k < fp->batch; k++) {
        struct sockaddr_ll sll;
        memset(&sll, 0, sizeof sll);
        socklen_t sl = sizeof sll;
        ssize_t n = recvfrom(fp->svm_fd, fp->rbuf, RECV_BUF, MSG_DONTWAIT,
                             (struct sockaddr *)&sll, &sl);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            /* A link going down and the like: counted, reading goes on next time (as
             * packet_socket.SocketErrors). */
            fp->stats.svm_errors++;
            return 0;
        }
        uint16_t eth = ntohs(sll.sll_protocol);
        /* Not a packet socket (a socketpair standing in for it in the unit tests): the
         * frame's type from its IP version. */
        if (sll.sll_family != AF_PACKET)
            eth = n > 0 && (fp->rbuf[0] >> 4) == 4 ? 0x0800 : n > 0 && (fp->rbuf[0] >> 4) == 6 ? 0x86DD : 0;
        int rc = FP_SLOW;
        if (eth == 0x0800)
            rc = fp_svm(fp, fp->rbuf, (size_t)n, now);
        if (rc < 0)
            return rc;
        if (rc == FP_SLOW) {
            uint8_t type = REC_SVM;
            uint32_t len = (uint32_t)n;
            PUT(fp, type);
            PUT(fp, eth);
            PUT(fp, now);
            PUT(fp, len);
            if (out_put(fp, fp->rbuf, (size_t)n))
                return -ENOMEM;
            fp->stats.slow_svm++;
        }
    }
    return 0;
}

static int read_ready(fp_t *fp, unsigned mask, double hold_limit) {
    double now = now_mono();
    int rc = 0;
    if (mask & 1)
        rc = read_nfq(fp, now);
    if (rc >= 0 && (mask & 2))
        rc = read_svm(fp, now);
    if (rc >= 0 && fp->held_total)
        rc = fp_expire(fp, now - hold_limit);
    if (rc >= 0 && fp->held_total && fp->lag > 0)
        rc = expire_gso(fp, now - fp->lag);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < fp->nrel; i++)
        ring_mark(fp, fp->rel[i], ID_ACCEPT);
    fp->nrel = 0;
    return ring_flush(fp);
}

/* Which sources are readable, waiting up to timeout_ms: bit 0 NFQUEUE, 1 SVM, 2 wake. */
int fp_wait(fp_t *fp, int timeout_ms) {
    struct epoll_event ev[3];
    int n = epoll_wait(fp->ep, ev, 3, timeout_ms);
    if (n < 0)
        return errno == EINTR ? FP_INTR : -errno;
    unsigned mask = 0;
    for (int i = 0; i < n; i++)
        mask |= 1u << ev[i].data.u32;
    return (int)mask;
}

int fp_read(fp_t *fp, double hold_limit) {
    return read_ready(fp, 3, hold_limit);
}

/* Serve until Python has work: records to read (bit 3), the wake descriptor readable
 * (bit 2), or timeout_ms passed (0 returned). Held packets older than hold_limit seconds
 * are given back on the way. busy_us: after data, poll without sleeping that long. */
int fp_poll(fp_t *fp, int timeout_ms, double hold_limit, int busy_us) {
    double start = now_mono(), deadline = start + timeout_ms / 1e3, busy_until = 0;
    for (;;) {
        double now = now_mono();
        int wait;
        if (busy_us && now < busy_until && !fp->held_total) {
            wait = 0;
        } else {
            double until = deadline;
            double old = fp_oldest(fp);
            if (old >= 0 && old + hold_limit < until)
                until = old + hold_limit;
            double gso = fp->lag > 0 ? oldest_gso(fp) : -1.0;
            if (gso >= 0 && gso + fp->lag < until)
                until = gso + fp->lag;
            wait = until <= now ? 0 : (int)((until - now) * 1e3) + 1;
        }
        int mask = fp_wait(fp, wait);
        if (mask < 0)
            return mask;
        if (mask & FP_INTR)
            return fp->out_len ? 8 : 0; /* a signal: let Python's handler run */
        int rc = read_ready(fp, (unsigned)mask & 3, hold_limit);
        if (rc < 0)
            return rc;
        if (mask & 3)
            busy_until = now_mono() + busy_us / 1e6;
        else if (wait == 0 && busy_us)
            sched_yield(); /* the VMs share these CPUs */
        int ret = (fp->out_len ? 8 : 0) | (mask & 4);
        if (ret)
            return ret;
        if (now_mono() >= deadline)
            return 0;
    }
}
