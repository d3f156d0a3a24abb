// The agent's own capabilities: read them, and keep only what it needs.
#include "CWeftLinux.h"

#include <errno.h>
#include <stdint.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <unistd.h>

uint64_t weft_effective_capabilities(void) {
    cap_t caps = cap_get_proc();
    if (!caps) return UINT64_MAX;
    uint64_t mask = 0;
    for (int c = 0; c <= CAP_LAST_CAP && c < 64; c++) {
        cap_flag_value_t v = CAP_CLEAR;
        if (cap_get_flag(caps, (cap_value_t)c, CAP_EFFECTIVE, &v) == 0 && v == CAP_SET) mask |= (1ULL << c);
    }
    cap_free(caps);
    return mask;
}

int weft_reexec_with_capabilities(uint64_t keep, char *const argv[]) {
    /* The bounding set first: dropping from it needs CAP_SETPCAP, which goes with it. */
    for (int c = 0; c < 64; c++) {
        if (keep & (1ULL << c)) continue;
        if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) <= 0) continue; /* not set, or beyond the kernel's last */
        if (cap_drop_bound((cap_value_t)c) != 0) return -errno;
    }
    if (cap_reset_ambient() != 0 && errno != EINVAL) return -errno;
    cap_t caps = cap_get_proc();
    if (!caps) return -errno;
    if (cap_clear_flag(caps, CAP_INHERITABLE) != 0 || cap_set_proc(caps) != 0) {
        int e = errno;
        cap_free(caps);
        return -e;
    }
    cap_free(caps);
    execv("/proc/self/exe", argv);
    return -errno;
}
