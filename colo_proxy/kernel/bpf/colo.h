/* Shared between the BPF programs and colo_proxy/datapath.py (which mirrors these
 * numbers and layouts; keep them in step). */
#ifndef COLO_H
#define COLO_H

/* Per-CPU counters, one array slot each. */
enum colo_counter {
	C_MIRROR_PKTS,     /* primary: client packets cloned onto the forward link */
	C_MIRROR_BYTES,
	C_CLONE_FAIL,      /* primary: bpf_clone_redirect failed (copy lost) */
	C_ISN_CLONES,      /* primary: PVM SYN/SYN-ACK copies sent for offset learning */
	C_SVM_OUT_PKTS,    /* primary: SVM output arriving on the forward link */
	C_SVM_OUT_BYTES,
	C_FWD_IN_PKTS,     /* secondary: mirrored input redirected into the SVM's tap */
	C_FWD_IN_BYTES,
	C_TAP_OUT_PKTS,    /* secondary: SVM output taken off its tap */
	C_TAP_OUT_BYTES,
	C_REDIRECT_FAIL,
	C_ACK_REWRITES,    /* ack += offset toward the SVM (primary: carried flows) */
	C_SACK_REWRITES,   /* SACK block edges += offset (same) */
	C_SEQ_REWRITES,    /* seq -= offset from the SVM (same) */
	C_PVM_ISN,         /* secondary: PVM ISNs learned */
	C_SVM_ISN,         /* secondary: SVM ISNs learned */
	C_NON_IP,          /* frames that are neither IPv4 nor IPv6 (passed, never rewritten) */
	C_TSECR_REWRITES,  /* timestamp echo += ts offset toward the SVM (same) */
	C_TSVAL_REWRITES,  /* timestamp value -= ts offset from the SVM (same) */
	C_IP6_EXT,         /* secondary: IPv6 TCP behind extension headers (passed unrewritten) */
	C_SVM_SOLICITS,    /* primary: the SVM's ARP requests and neighbour solicitations sent on
			    * to the LAN (uplink) */
	C_MIRROR_REFUSED,  /* primary: frames delivered to the PVM but not mirrored: not client
			    * traffic for the VM (see colo_mirror) */
	C_FWD_FOREIGN,     /* secondary: frames on the forward link that claim to be the primary
			    * host's own (the VM's source MAC, our ethertype) but come from
			    * another MAC: dropped, nothing learned */
	C_SVM_FOREIGN,     /* primary: frames on the forward link from another MAC than the
			    * secondary host's: kept from the comparator */
	C_MAX,
};

/* One TCP connection, addresses and ports in network byte order, VM's side first.
 * Addresses are IPv6; an IPv4 one is v4-mapped (::ffff:a.b.c.d), so both families share
 * one map (36-byte key, 40-byte value per flow). */
struct colo_flow {
	__u32 vm_ip[4];
	__u32 peer_ip[4];
	__u16 vm_port;
	__u16 peer_port;
};

#define COLO_HAVE_PVM 1
#define COLO_HAVE_SVM 2
#define COLO_HAVE_BOTH 3
#define COLO_PAIRED 4  /* the offset was computed from this pair of ISNs */

/* Sequence offset of one connection: offset = svm_isn - pvm_isn once both are known.
 * Timestamp offset (RFC 7323): ts_offset = svm_tsval - pvm_tsval of the two SYN-ACKs (or
 * SYNs), valid when ts_have has both bits (each handshake segment carried the option). */
struct colo_offset {
	/* 64-bit: the two sides set their bits with atomic fetch-and-or, which the BPF
	 * backend of Debian 12's bcc (no alu32) supports on 64-bit words only. */
	__u64 have;
	__u64 ts_have;
	__u32 pvm_isn;
	__u32 svm_isn;
	__u32 offset;
	__u32 pvm_tsval;
	__u32 svm_tsval;
	__u32 ts_offset;
};

/* Carried-flow announcements and the secondary's challenges (colo_proxy/wire/carry.py)
 * travel on the forward link with this ethertype (IEEE 802 local experimental). The
 * programs never read them: they pass those from the peer host's forward-link MAC up to
 * the proxy's packet socket, which checks their HMAC, and drop all others. */
#define COLO_ETH_P_CARRY 0x88B5

/* mode[0]: 0 protected (mirror/steer), 1 pass-through (failover: no mirror; secondary
 * output to its bridge, old connections still rewritten, new ones not learned). */
#define COLO_MODE_PROTECTED 0
#define COLO_MODE_PASSTHROUGH 1

#endif
