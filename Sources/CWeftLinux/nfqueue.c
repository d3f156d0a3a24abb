// NFQUEUE reader for the agent's egress verdicts (libnetfilter_queue). One handle per
// workload netns: the netlink socket belongs to the netns of the thread that opens it.
#include "CWeftLinux.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#define WEFT_NFQ_PENDING 512

struct weft_nfq {
    struct nfq_handle *h;
    struct nfq_q_handle *qh;
    int fd;
    /* Packets parsed from the last recv() and not yet handed out. */
    struct weft_nfq_packet pending[WEFT_NFQ_PENDING];
    int head, count;
    char buf[65536] __attribute__((aligned));
};

/* The IP header's transport protocol and ports. Short or odd packets leave ports 0. */
static void parse(const unsigned char *p, int len, struct weft_nfq_packet *out) {
    if (len < 1) return;
    int version = p[0] >> 4;
    int offset = 0;
    int proto = -1;
    if (version == 4 && len >= 20) {
        out->family = 4;
        proto = p[9];
        memcpy(out->src, p + 12, 4);
        memcpy(out->dst, p + 16, 4);
        offset = (p[0] & 0x0f) * 4;
        /* A non-first fragment has no transport header. */
        if ((((p[6] & 0x1f) << 8) | p[7]) != 0) offset = -1;
    } else if (version == 6 && len >= 40) {
        out->family = 6;
        proto = p[6];
        memcpy(out->src, p + 8, 16);
        memcpy(out->dst, p + 24, 16);
        offset = 40;
        /* Walk the extension headers (hop-by-hop, routing, destination options, fragment, AH). */
        for (int hops = 0; hops < 8 && offset >= 0 && offset + 8 <= len; hops++) {
            if (proto == 0 || proto == 43 || proto == 60) {
                int next = p[offset];
                offset += (p[offset + 1] + 1) * 8;
                proto = next;
            } else if (proto == 44) {
                int next = p[offset];
                int fragOffset = ((p[offset + 2] << 8) | p[offset + 3]) >> 3;
                offset = fragOffset != 0 ? -1 : offset + 8;
                proto = next;
            } else if (proto == 51) {
                int next = p[offset];
                offset += (p[offset + 1] + 2) * 4;
                proto = next;
            } else {
                break;
            }
        }
    } else {
        return;
    }
    out->protocol = (uint8_t)(proto < 0 ? 255 : proto);
    if ((proto == 6 || proto == 17 || proto == 132 || proto == 136) && offset >= 0 && offset + 4 <= len) {
        out->sport = (uint16_t)((p[offset] << 8) | p[offset + 1]);
        out->dport = (uint16_t)((p[offset + 2] << 8) | p[offset + 3]);
    }
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *data) {
    (void)msg;
    struct weft_nfq *q = data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (!ph) return 0;
    uint32_t id = ntohl(ph->packet_id);
    if (q->count == WEFT_NFQ_PENDING) {
        nfq_set_verdict(qh, id, NF_DROP, 0, NULL);
        return 0;
    }
    struct weft_nfq_packet *out = &q->pending[(q->head + q->count) % WEFT_NFQ_PENDING];
    memset(out, 0, sizeof *out);
    out->id = id;
    out->protocol = 255;
    out->uid = UINT32_MAX;
    uint32_t uid = 0;
    if (nfq_get_uid(nfa, &uid)) out->uid = uid;
    unsigned char *payload = NULL;
    int len = nfq_get_payload(nfa, &payload);
    if (len > 0 && payload) parse(payload, len, out);
    q->count++;
    return 0;
}

struct weft_nfq *weft_nfq_open(uint16_t queue, int *error) {
    struct weft_nfq *q = calloc(1, sizeof *q);
    if (!q) { *error = -ENOMEM; return NULL; }
    q->h = nfq_open();
    if (!q->h) { *error = -(errno ? errno : EPERM); free(q); return NULL; }
    q->qh = nfq_create_queue(q->h, queue, on_packet, q);
    if (!q->qh) {
        *error = -(errno ? errno : EBUSY);
        nfq_close(q->h);
        free(q);
        return NULL;
    }
    /* Headers are enough for a verdict. */
    if (nfq_set_mode(q->qh, NFQNL_COPY_PACKET, 128) < 0) {
        *error = -(errno ? errno : EINVAL);
        weft_nfq_close(q);
        return NULL;
    }
    nfq_set_queue_maxlen(q->qh, 4096);
    nfq_set_queue_flags(q->qh, NFQA_CFG_F_UID_GID, NFQA_CFG_F_UID_GID);
    q->fd = nfq_fd(q->h);
    return q;
}

int weft_nfq_next(struct weft_nfq *q, struct weft_nfq_packet *out, int timeout_ms, uint64_t *dropped) {
    for (;;) {
        if (q->count > 0) {
            *out = q->pending[q->head];
            q->head = (q->head + 1) % WEFT_NFQ_PENDING;
            q->count--;
            return 1;
        }
        struct pollfd pfd = { .fd = q->fd, .events = POLLIN };
        int rc = poll(&pfd, 1, timeout_ms);
        if (rc == 0) return 0;
        if (rc < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        ssize_t n = recv(q->fd, q->buf, sizeof q->buf, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            if (errno == ENOBUFS) { if (dropped) (*dropped)++; continue; }
            return -errno;
        }
        q->head = 0;
        nfq_handle_packet(q->h, q->buf, (int)n);
        if (q->count == 0) return 0;
    }
}

int weft_nfq_verdict(struct weft_nfq *q, uint32_t id, int accept) {
    return nfq_set_verdict(q->qh, id, accept ? NF_ACCEPT : NF_DROP, 0, NULL) < 0 ? -errno : 0;
}

void weft_nfq_close(struct weft_nfq *q) {
    if (!q) return;
    if (q->qh) nfq_destroy_queue(q->qh);
    if (q->h) nfq_close(q->h);
    free(q);
}
