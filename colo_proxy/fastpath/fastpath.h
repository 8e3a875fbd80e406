/* The fast path's interface, read by cffi as its cdef (so: declarations only, no
 * preprocessor lines) and included by fastpath.c. See colo_proxy/fastpath/__init__.py. */

typedef struct fp fp_t;

/* What the comparator knows of a flow it lends (TcpFlow's fields, stream offsets as
 * int64, sequence bases as the 32-bit numbers it keeps). One side may be ahead of the
 * matched offset: its unmatched bytes come with the lend (fp_lend's `state`). */
typedef struct {
    uint32_t p_base, s_base, p_abase, s_abase;
    int64_t matched, s_ack, p_amax, p_top, s_top;
    double s_prog;
} fp_facts;

typedef struct {
    uint64_t pvm_packets, svm_packets;     /* taken by the fast path */
    uint64_t released;                     /* PVM packets it released */
    uint64_t slow_pvm, slow_svm;           /* handed to Python as they came */
    uint64_t lent, handbacks[8];           /* flows lent; given back, by FP_BACK_* */
    uint64_t enobufs, svm_errors, svm_non_ip, verdict_msgs;
} fp_stats;

/* The core: packets in, releases and records out; no socket, no clock. */
fp_t *fp_new(int max_flow_packets, int64_t max_flow_bytes, int max_flows);
void fp_free(fp_t *fp);
/* state: the held PVM packets and kept SVM segments in a give-back record's layout
 * (counts, then each entry with its bytes); len 0 for none. */
int fp_lend(fp_t *fp, const uint8_t *key, const fp_facts *facts, const uint8_t *state,
            size_t len);
int fp_pvm(fp_t *fp, uint32_t id, const uint8_t *pkt, size_t len, double now, int gso);
int fp_svm(fp_t *fp, const uint8_t *pkt, size_t len, double now);
int fp_reclaim_all(fp_t *fp, int reason);
int fp_expire(fp_t *fp, double before);
int fp_lent_flows(fp_t *fp);
int fp_held_packets(fp_t *fp);
int fp_kept_packets(fp_t *fp);
double fp_oldest(fp_t *fp);
fp_stats *fp_get_stats(fp_t *fp);
/* Records for Python (slow packets, flows given back) and released ids. */
const uint8_t *fp_out(fp_t *fp, size_t *len);
const uint32_t *fp_released(fp_t *fp, size_t *n);
void fp_out_clear(fp_t *fp);

/* The sockets: NFQUEUE (verdicts included) and the SVM's packet socket. */
int fp_attach(fp_t *fp, int nfq_fd, uint16_t queue, int svm_fd, int wake_fd, int batch);
int fp_poll(fp_t *fp, int timeout_ms, double hold_limit, int busy_us);
int fp_wait(fp_t *fp, int timeout_ms);
int fp_read(fp_t *fp, double hold_limit);
int fp_decide(fp_t *fp, const uint32_t *accept, size_t na, const uint32_t *drop, size_t nd);
int fp_decide_all(fp_t *fp, int accept);
/* Resegmenting: give back flows whose oldest held packet is a super-packet held lag
 * seconds (0: never); fp_requeue sends held ids to queue to_queue (NF_QUEUE verdicts). */
void fp_set_resegment(fp_t *fp, double lag, uint16_t to_queue);
int fp_requeue(fp_t *fp, const uint32_t *ids, size_t n);
int fp_outstanding(fp_t *fp);
