// Linux glue for Weft. Every function returns 0 (or a non-negative value) on success and a
// negative errno on failure, so Swift can turn the code into a precise error. Nothing here
// keeps state: the calling thread's network namespace is always restored before returning.
#ifndef CWEFTLINUX_H
#define CWEFTLINUX_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <signal.h>

// SO_ORIGINAL_DST from <linux/netfilter_ipv4.h>; that header clashes with <netinet/in.h>.
#define WEFT_SO_ORIGINAL_DST 80
#define WEFT_SO_NETNS_COOKIE 71

// ---- network namespaces -------------------------------------------------------------

/// Creates a named netns the way iproute2 does (/run/netns/NAME bind mount, /run/netns
/// shared), so `ip netns` sees it. -EEXIST if the name is taken.
int weft_netns_create(const char *name);
/// Unmounts and removes /run/netns/NAME.
int weft_netns_delete(const char *name);
/// Opens a netns file (O_RDONLY|O_CLOEXEC); the fd is a handle for the other calls.
int weft_netns_open_path(const char *path);
/// Moves the *calling thread* into the netns. Used only by a thread that lives there.
int weft_setns_net(int nsfd);
/// Creates a socket inside the netns without leaving the calling thread there.
int weft_socket_in_netns(int nsfd, int domain, int type, int protocol);
/// The kernel's cookie of the netns a socket belongs to (0 and -errno on failure).
int weft_socket_netns_cookie(int fd, uint64_t *cookie);
/// The cookie of the netns behind a netns fd (a throwaway socket is made inside it).
int weft_netns_cookie(int nsfd, uint64_t *cookie);

// ---- SO_ORIGINAL_DST ----------------------------------------------------------------

/// Reads the pre-NAT destination of an accepted TCP socket (used by tests on raw fds; the
/// proxy reads it through NIO's SocketOptionProvider). addr receives 4 or 16 bytes in
/// network order, port in host order.
int weft_original_dst(int fd, int family, uint8_t addr[16], uint16_t *port);

// ---- netlink (libmnl) ---------------------------------------------------------------
// nsfd < 0 means "the calling thread's netns".

int weft_link_index(int nsfd, const char *ifname);
int weft_link_add_bridge(int nsfd, const char *name);
/// Creates a veth pair: `host` stays in the calling netns, `peer` is created directly in
/// the netns behind peer_nsfd.
int weft_link_add_veth(const char *host, const char *peer, int peer_nsfd);
/// Sets the link up, and (if master_ifindex > 0) enslaves it to that bridge.
int weft_link_up(int nsfd, const char *ifname, int master_ifindex);
int weft_link_delete(int nsfd, const char *ifname);
/// Adds an address (4 or 16 bytes) with a prefix length to a link.
int weft_addr_add(int nsfd, const char *ifname, int family, const uint8_t *addr, int prefixlen);
/// Same, with IFA_F_* flags (IFA_F_NODAD = 0x02: an IPv6 address usable at once).
int weft_addr_add_flags(int nsfd, const char *ifname, int family, const uint8_t *addr, int prefixlen,
                        uint32_t flags);
#define WEFT_IFA_F_NODAD 0x02
/// Adds a default route via an IPv4 gateway.
int weft_route_add_default4(int nsfd, const uint8_t gateway[4]);
/// Adds a default route via a gateway of either family (4 or 16 bytes).
int weft_route_add_default(int nsfd, int family, const uint8_t *gateway);
/// Writes up to max IPv4 addresses (4 bytes each) of non-loopback links; returns the count.
int weft_netns_ipv4_addresses(int nsfd, uint8_t *out, int max);

// ---- processes ----------------------------------------------------------------------

/// Forks; the child enters the netns, takes the supplementary groups, gid and uid, drops
/// every capability (bounding, ambient, permitted), sets no_new_privs and a parent-death
/// signal, restores the default signal mask, and execve()s path. Returns the child's pid,
/// or -errno of the step that failed in the child (reported over a CLOEXEC pipe).
/// failed_step names the step on failure (see weft_spawn_step_name).
pid_t weft_spawn_dropped(int nsfd, uid_t uid, gid_t gid, const gid_t *groups, int ngroups,
                         const char *path, char *const argv[], char *const envp[],
                         int *failed_step);
const char *weft_spawn_step_name(int step);

/// Installs process-wide handlers for the signals `weft run` forwards (HUP INT QUIT TERM
/// USR1 USR2 WINCH CONT). Before a child exists they are only recorded.
int weft_install_signal_forwarding(void);
/// The first terminating signal (INT, TERM, HUP, QUIT) recorded before the child existed.
int weft_pending_termination(void);
/// Waits for pid, forwarding the handled signals to it. Signals the kernel generated for
/// the terminal (si_code == SI_KERNEL) already reached the child's process group and are
/// not sent twice. Returns the raw wait status.
int weft_wait_forwarding(pid_t pid);

/// Layout of struct ucred (SO_PEERCRED), which Glibc only declares under _GNU_SOURCE.
typedef struct { pid_t pid; uid_t uid; gid_t gid; } weft_ucred;
#define WEFT_SO_PEERCRED 17
#define WEFT_SO_MARK 36

#endif

/* ---- NFQUEUE (libnetfilter_queue): per-flow verdicts for non-TCP egress ---- */

struct weft_nfq;

/* The first packet of a new flow, as far as the verdict needs it. */
struct weft_nfq_packet {
    uint32_t id;
    uint8_t family;      /* 4 or 6 */
    uint8_t protocol;    /* IP protocol number (after IPv6 extension headers) */
    uint16_t sport;      /* host order; 0 when not TCP/UDP/SCTP */
    uint16_t dport;
    uint8_t src[16];     /* IPv4 in the first 4 bytes */
    uint8_t dst[16];
    uint32_t uid;        /* socket owner when the kernel knows it, else UINT32_MAX */
};

/* Binds queue `queue` in the calling thread's network namespace. NULL on failure, with
   -errno in *error (EEXIST/EBUSY: another process holds the queue). */
struct weft_nfq *weft_nfq_open(uint16_t queue, int *error);
/* Waits up to timeout_ms for a queued packet. 1: *out filled; 0: timeout; <0: -errno.
   Packets the kernel could not queue (ENOBUFS) were dropped by it: *dropped counts those
   episodes. */
int weft_nfq_next(struct weft_nfq *q, struct weft_nfq_packet *out, int timeout_ms, uint64_t *dropped);
/* NF_ACCEPT (accept != 0) or NF_DROP for packet `id`. 0 or -errno. */
int weft_nfq_verdict(struct weft_nfq *q, uint32_t id, int accept);
void weft_nfq_close(struct weft_nfq *q);

/* ---- the agent's own privileges ---- */

/* The calling process's effective capability set as a bit mask (bit n = capability n),
   from capget(2). UINT64_MAX on failure. */
uint64_t weft_effective_capabilities(void);
/* Keeps only the capabilities in `keep` (bit mask), for every thread: drops every other one
   from the bounding set and clears ambient and inheritable, then re-executes /proc/self/exe
   with `argv` — capabilities are per thread, and execve is what applies the new set to the
   whole (new) process: root's permitted set after execve is its bounding set. Returns only
   on failure, with -errno. */
int weft_reexec_with_capabilities(uint64_t keep, char *const argv[]);
