// Spawning the wrapped command and supervising it. The child runs only system calls
// between fork and execve (plus libcap on a cap_t prepared before the fork).
#include "CWeftLinux.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {
    STEP_SETNS = 1, STEP_SETGROUPS, STEP_SETGID, STEP_BOUNDING, STEP_AMBIENT, STEP_SETUID,
    STEP_CAPS, STEP_NO_NEW_PRIVS, STEP_PDEATHSIG, STEP_EXEC, STEP_FORK, STEP_PIPE
};

const char *weft_spawn_step_name(int step) {
    switch (step) {
    case STEP_SETNS: return "entering the network namespace";
    case STEP_SETGROUPS: return "setting supplementary groups";
    case STEP_SETGID: return "setting the group id";
    case STEP_BOUNDING: return "dropping the capability bounding set";
    case STEP_AMBIENT: return "clearing ambient capabilities";
    case STEP_SETUID: return "setting the user id";
    case STEP_CAPS: return "clearing capabilities";
    case STEP_NO_NEW_PRIVS: return "setting no_new_privs";
    case STEP_PDEATHSIG: return "setting the parent-death signal";
    case STEP_EXEC: return "executing the command";
    case STEP_FORK: return "forking";
    case STEP_PIPE: return "creating a pipe";
    default: return "unknown step";
    }
}

static const int forwarded[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT};

static void child_fail(int fd, int step) {
    int report[2] = {step, errno};
    ssize_t ignored = write(fd, report, sizeof report);
    (void)ignored;
    _exit(127);
}

pid_t weft_spawn_dropped(int nsfd, uid_t uid, gid_t gid, const gid_t *groups, int ngroups,
                         const char *path, char *const argv[], char *const envp[],
                         int *failed_step) {
    *failed_step = 0;
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) { *failed_step = STEP_PIPE; return -errno; }
    cap_t empty = cap_init();
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        cap_free(empty);
        close(pipefd[0]); close(pipefd[1]);
        *failed_step = STEP_FORK;
        return -e;
    }
    if (pid == 0) {
        int w = pipefd[1];
        close(pipefd[0]);
        // Swift runtimes ignore SIGPIPE; the wrapped program gets the defaults back.
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        for (int sig = 1; sig < NSIG; sig++) {
            if (sig == SIGKILL || sig == SIGSTOP) continue;
            sigaction(sig, &dfl, NULL);
        }
        if (nsfd >= 0 && setns(nsfd, CLONE_NEWNET) != 0) child_fail(w, STEP_SETNS);
        if (setgroups((size_t)ngroups, groups) != 0) child_fail(w, STEP_SETGROUPS);
        if (setresgid(gid, gid, gid) != 0) child_fail(w, STEP_SETGID);
        for (int cap = 0; cap <= 63; cap++) {
            if (!CAP_IS_SUPPORTED(cap)) continue;
            if (cap_drop_bound((cap_value_t)cap) != 0) child_fail(w, STEP_BOUNDING);
        }
        if (cap_reset_ambient() != 0 && errno != EINVAL) child_fail(w, STEP_AMBIENT);
        if (setresuid(uid, uid, uid) != 0) child_fail(w, STEP_SETUID);
        if (cap_set_proc(empty) != 0) child_fail(w, STEP_CAPS);
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) child_fail(w, STEP_NO_NEW_PRIVS);
        // Set after setuid: credential changes clear the parent-death signal.
        if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) != 0) child_fail(w, STEP_PDEATHSIG);
        if (getppid() != parent) _exit(129);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(path, argv, envp);
        child_fail(w, STEP_EXEC);
    }
    cap_free(empty);
    close(pipefd[1]);
    int report[2] = {0, 0};
    ssize_t n;
    do { n = read(pipefd[0], report, sizeof report); } while (n < 0 && errno == EINTR);
    close(pipefd[0]);
    if (n == (ssize_t)sizeof report) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        *failed_step = report[0];
        return -report[1];
    }
    return pid;
}

// ---- signal forwarding for `weft run` ------------------------------------------------
// A handler installed for the whole process, not a signal mask: the Swift runtime decides
// which threads exist and what they block, but a disposition holds for every thread. The
// handler only reads a pid and calls kill(), both async-signal-safe.

static volatile sig_atomic_t child_pid_g = 0;
static volatile sig_atomic_t pending_g = 0;  // bit n: signal n arrived before the child existed

static void forward_handler(int sig, siginfo_t *info, void *ucontext) {
    (void)ucontext;
    pid_t pid = (pid_t)child_pid_g;
    if (pid <= 0) {
        pending_g |= (sig_atomic_t)(1u << sig);
        return;
    }
    // A terminal's ^C reaches the whole foreground process group, the child included.
    if (info != NULL && info->si_code == SI_KERNEL) return;
    kill(pid, sig);
}

int weft_install_signal_forwarding(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = forward_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) {
        if (sigaction(forwarded[i], &sa, NULL) != 0) return -errno;
    }
    return 0;
}

int weft_pending_termination(void) {
    const int terminating[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    for (size_t i = 0; i < 4; i++) {
        if (pending_g & (1u << terminating[i])) return terminating[i];
    }
    return 0;
}

int weft_wait_forwarding(pid_t pid) {
    child_pid_g = pid;
    // Forward what arrived between fork() and now (signals from before are handled by
    // the caller through weft_pending_termination before it spawns).
    sig_atomic_t early = pending_g;
    pending_g = 0;
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) {
        if (early & (1u << forwarded[i])) kill(pid, forwarded[i]);
    }
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, 0);
        if (r == pid) break;
        if (r < 0 && errno != EINTR) { child_pid_g = 0; return -errno; }
    }
    child_pid_g = 0;
    return status;
}
