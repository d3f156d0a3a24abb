// rtnetlink requests through libmnl: links (bridge, veth), addresses, default route.
// Each call opens a NETLINK_ROUTE socket inside the requested netns, sends one request
// with NLM_F_ACK, and returns the kernel's answer as 0 or -errno.
#include "CWeftLinux.h"

#include <errno.h>
#include <ifaddrs.h>
#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int weft_enter_netns(int nsfd, int *saved);
void weft_leave_netns(int saved);

#define NL_BUF 8192

static int nl_transact(int nsfd, struct nlmsghdr *nlh) {
    int fd = nsfd >= 0 ? weft_socket_in_netns(nsfd, AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE)
                       : socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return nsfd >= 0 ? fd : -errno;
    struct mnl_socket *nl = mnl_socket_fdopen(fd);
    if (nl == NULL) { int e = -errno; close(fd); return e; }
    int rc = 0;
    if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) { rc = -errno; goto out; }
    unsigned int seq = (unsigned int)time(NULL);
    unsigned int portid = mnl_socket_get_portid(nl);
    nlh->nlmsg_seq = seq;
    nlh->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) { rc = -errno; goto out; }
    char buf[NL_BUF];
    ssize_t n = mnl_socket_recvfrom(nl, buf, sizeof buf);
    if (n < 0) { rc = -errno; goto out; }
    if (mnl_cb_run(buf, (size_t)n, seq, portid, NULL, NULL) < 0) rc = -errno;
out:
    mnl_socket_close(nl);
    return rc;
}

int weft_link_index(int nsfd, const char *ifname) {
    int saved;
    int rc = weft_enter_netns(nsfd, &saved);
    if (rc != 0) return rc;
    unsigned int idx = if_nametoindex(ifname);
    int e = idx == 0 ? -errno : (int)idx;
    weft_leave_netns(saved);
    return e;
}

static struct nlmsghdr *link_msg(char *buf, uint16_t type, uint16_t flags, struct ifinfomsg **ifm) {
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = type;
    nlh->nlmsg_flags = flags;
    *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof(struct ifinfomsg));
    (*ifm)->ifi_family = AF_UNSPEC;
    return nlh;
}

int weft_link_add_bridge(int nsfd, const char *name) {
    char buf[NL_BUF];
    struct ifinfomsg *ifm;
    struct nlmsghdr *nlh = link_msg(buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifm);
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
    struct nlattr *info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
    mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "bridge");
    mnl_attr_nest_end(nlh, info);
    return nl_transact(nsfd, nlh);
}

int weft_link_add_veth(const char *host, const char *peer, int peer_nsfd) {
    char buf[NL_BUF];
    struct ifinfomsg *ifm;
    struct nlmsghdr *nlh = link_msg(buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifm);
    mnl_attr_put_strz(nlh, IFLA_IFNAME, host);
    struct nlattr *info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
    mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "veth");
    struct nlattr *data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
    struct nlattr *peer_attr = mnl_attr_nest_start(nlh, VETH_INFO_PEER);
    // VETH_INFO_PEER carries a struct ifinfomsg followed by the peer's own attributes.
    struct ifinfomsg *pifm = mnl_nlmsg_get_payload_tail(nlh);
    memset(pifm, 0, sizeof *pifm);
    nlh->nlmsg_len += MNL_ALIGN(sizeof *pifm);
    mnl_attr_put_strz(nlh, IFLA_IFNAME, peer);
    if (peer_nsfd >= 0) mnl_attr_put_u32(nlh, IFLA_NET_NS_FD, (uint32_t)peer_nsfd);
    mnl_attr_nest_end(nlh, peer_attr);
    mnl_attr_nest_end(nlh, data);
    mnl_attr_nest_end(nlh, info);
    return nl_transact(-1, nlh);
}

int weft_link_up(int nsfd, const char *ifname, int master_ifindex) {
    int idx = weft_link_index(nsfd, ifname);
    if (idx < 0) return idx;
    char buf[NL_BUF];
    struct ifinfomsg *ifm;
    struct nlmsghdr *nlh = link_msg(buf, RTM_NEWLINK, 0, &ifm);
    ifm->ifi_index = idx;
    ifm->ifi_flags = IFF_UP;
    ifm->ifi_change = IFF_UP;
    if (master_ifindex > 0) mnl_attr_put_u32(nlh, IFLA_MASTER, (uint32_t)master_ifindex);
    return nl_transact(nsfd, nlh);
}

int weft_link_delete(int nsfd, const char *ifname) {
    int idx = weft_link_index(nsfd, ifname);
    if (idx < 0) return idx;
    char buf[NL_BUF];
    struct ifinfomsg *ifm;
    struct nlmsghdr *nlh = link_msg(buf, RTM_DELLINK, 0, &ifm);
    ifm->ifi_index = idx;
    return nl_transact(nsfd, nlh);
}

int weft_addr_add(int nsfd, const char *ifname, int family, const uint8_t *addr, int prefixlen) {
    return weft_addr_add_flags(nsfd, ifname, family, addr, prefixlen, 0);
}

int weft_addr_add_flags(int nsfd, const char *ifname, int family, const uint8_t *addr, int prefixlen,
                        uint32_t flags) {
    int idx = weft_link_index(nsfd, ifname);
    if (idx < 0) return idx;
    char buf[NL_BUF];
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = RTM_NEWADDR;
    nlh->nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
    struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(nlh, sizeof *ifa);
    ifa->ifa_family = (unsigned char)family;
    ifa->ifa_prefixlen = (unsigned char)prefixlen;
    ifa->ifa_scope = RT_SCOPE_UNIVERSE;
    ifa->ifa_index = (unsigned int)idx;
    size_t len = family == AF_INET ? 4 : 16;
    if (family == AF_INET) mnl_attr_put(nlh, IFA_LOCAL, len, addr);
    mnl_attr_put(nlh, IFA_ADDRESS, len, addr);
    if (flags != 0) mnl_attr_put_u32(nlh, IFA_FLAGS, flags);
    return nl_transact(nsfd, nlh);
}

int weft_route_add_default4(int nsfd, const uint8_t gateway[4]) {
    return weft_route_add_default(nsfd, AF_INET, gateway);
}

int weft_route_add_default(int nsfd, int family, const uint8_t *gateway) {
    char buf[NL_BUF];
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = RTM_NEWROUTE;
    nlh->nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
    struct rtmsg *rtm = mnl_nlmsg_put_extra_header(nlh, sizeof *rtm);
    rtm->rtm_family = (unsigned char)family;
    rtm->rtm_dst_len = 0;
    rtm->rtm_table = RT_TABLE_MAIN;
    rtm->rtm_protocol = RTPROT_BOOT;
    rtm->rtm_scope = RT_SCOPE_UNIVERSE;
    rtm->rtm_type = RTN_UNICAST;
    mnl_attr_put(nlh, RTA_GATEWAY, family == AF_INET ? 4 : 16, gateway);
    return nl_transact(nsfd, nlh);
}

int weft_netns_ipv4_addresses(int nsfd, uint8_t *out, int max) {
    int saved;
    int rc = weft_enter_netns(nsfd, &saved);
    if (rc != 0) return rc;
    struct ifaddrs *list = NULL;
    int count = 0;
    if (getifaddrs(&list) != 0) {
        rc = -errno;
    } else {
        for (struct ifaddrs *it = list; it != NULL && count < max; it = it->ifa_next) {
            if (it->ifa_addr == NULL || it->ifa_addr->sa_family != AF_INET) continue;
            if (it->ifa_flags & IFF_LOOPBACK) continue;
            struct sockaddr_in *sin = (struct sockaddr_in *)it->ifa_addr;
            memcpy(out + 4 * count, &sin->sin_addr, 4);
            count++;
        }
        freeifaddrs(list);
        rc = count;
    }
    weft_leave_netns(saved);
    return rc;
}
