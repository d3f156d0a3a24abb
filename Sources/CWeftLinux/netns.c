// Network namespace handling. Every function that enters a netns restores the calling
// thread before returning; a failed restore aborts, because a thread silently left in the
// wrong namespace would create sockets where nobody expects them.
#include "CWeftLinux.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define NETNS_RUN_DIR "/run/netns"

int weft_enter_netns(int nsfd, int *saved) {
    *saved = -1;
    if (nsfd < 0) return 0;
    int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (self < 0) return -errno;
    if (setns(nsfd, CLONE_NEWNET) != 0) {
        int e = -errno;
        close(self);
        return e;
    }
    *saved = self;
    return 0;
}

void weft_leave_netns(int saved) {
    if (saved < 0) return;
    if (setns(saved, CLONE_NEWNET) != 0) {
        fprintf(stderr, "weft: fatal: cannot return a thread to its network namespace: %s\n",
                strerror(errno));
        abort();
    }
    close(saved);
}

static int make_run_dir_shared(void) {
    if (mkdir(NETNS_RUN_DIR, 0755) != 0 && errno != EEXIST) return -errno;
    // Same dance as iproute2: /run/netns must be a shared mount so bind mounts made here
    // propagate into other mount namespaces (systemd services with ProtectSystem, say).
    if (mount("", NETNS_RUN_DIR, "none", MS_SHARED | MS_REC, NULL) == 0) return 0;
    if (errno != EINVAL) return -errno;
    if (mount(NETNS_RUN_DIR, NETNS_RUN_DIR, "none", MS_BIND | MS_REC, NULL) != 0) return -errno;
    if (mount("", NETNS_RUN_DIR, "none", MS_SHARED | MS_REC, NULL) != 0) return -errno;
    return 0;
}

int weft_netns_create(const char *name) {
    char path[256];
    if (snprintf(path, sizeof path, NETNS_RUN_DIR "/%s", name) >= (int)sizeof path) return -ENAMETOOLONG;
    int rc = make_run_dir_shared();
    if (rc != 0) return rc;
    int fd = open(path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0);
    if (fd < 0) return -errno;
    close(fd);

    int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (self < 0) { rc = -errno; unlink(path); return rc; }
    if (unshare(CLONE_NEWNET) != 0) { rc = -errno; close(self); unlink(path); return rc; }
    if (mount("/proc/thread-self/ns/net", path, "none", MS_BIND, NULL) != 0) rc = -errno;
    weft_leave_netns(self);
    if (rc != 0) unlink(path);
    return rc;
}

int weft_netns_delete(const char *name) {
    char path[256];
    if (snprintf(path, sizeof path, NETNS_RUN_DIR "/%s", name) >= (int)sizeof path) return -ENAMETOOLONG;
    if (umount2(path, MNT_DETACH) != 0 && errno != EINVAL) {
        if (errno == ENOENT) return -ENOENT;
        return -errno;
    }
    if (unlink(path) != 0) return -errno;
    return 0;
}

int weft_netns_open_path(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int weft_setns_net(int nsfd) {
    return setns(nsfd, CLONE_NEWNET) == 0 ? 0 : -errno;
}

int weft_socket_in_netns(int nsfd, int domain, int type, int protocol) {
    int saved;
    int rc = weft_enter_netns(nsfd, &saved);
    if (rc != 0) return rc;
    int fd = socket(domain, type, protocol);
    int e = fd < 0 ? -errno : 0;
    weft_leave_netns(saved);
    return fd < 0 ? e : fd;
}

int weft_socket_netns_cookie(int fd, uint64_t *cookie) {
    socklen_t len = sizeof *cookie;
    return getsockopt(fd, SOL_SOCKET, WEFT_SO_NETNS_COOKIE, cookie, &len) == 0 ? 0 : -errno;
}

int weft_netns_cookie(int nsfd, uint64_t *cookie) {
    int fd = weft_socket_in_netns(nsfd, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return fd;
    int rc = weft_socket_netns_cookie(fd, cookie);
    close(fd);
    return rc;
}

int weft_original_dst(int fd, int family, uint8_t addr[16], uint16_t *port) {
    if (family == AF_INET) {
        struct sockaddr_in sin;
        socklen_t len = sizeof sin;
        if (getsockopt(fd, SOL_IP, WEFT_SO_ORIGINAL_DST, &sin, &len) != 0) return -errno;
        memcpy(addr, &sin.sin_addr, 4);
        *port = ntohs(sin.sin_port);
        return 0;
    }
    struct sockaddr_in6 sin6;
    socklen_t len = sizeof sin6;
    if (getsockopt(fd, SOL_IPV6, WEFT_SO_ORIGINAL_DST, &sin6, &len) != 0) return -errno;
    memcpy(addr, &sin6.sin6_addr, 16);
    *port = ntohs(sin6.sin6_port);
    return 0;
}
