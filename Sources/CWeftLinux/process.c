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

static void forwarded_set(sigset_t *set) {
    sigemptyset(set);
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) sigaddset(set, forwarded[i]);
    sigaddset(set, SIGCHLD);
}

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

int weft_block_forwarded_signals(void) {
    sigset_t set;
    forwarded_set(&set);
    int rc = pthread_sigmask(SIG_BLOCK, &set, NULL);
    return rc == 0 ? 0 : -rc;
}

int weft_wait_forwarding(pid_t pid) {
    sigset_t set;
    forwarded_set(&set);
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (r < 0 && errno != EINTR) return -errno;
        siginfo_t info;
        struct timespec tick = {0, 200 * 1000 * 1000};
        int sig = sigtimedwait(&set, &info, &tick);
        if (sig < 0 || sig == SIGCHLD) continue;
        // A terminal's ^C reaches the whole foreground process group, the child included.
        if (info.si_code == SI_KERNEL) continue;
        kill(pid, sig);
    }
}

// `weft run` forwards signals to the wrapped command and must clean up after it, so the
// signals it forwards are blocked before main() — before the Swift runtime, Dispatch or NIO
// start any thread. Every thread inherits the mask; none can be killed by these signals, and
// weft_wait_forwarding() collects them with sigtimedwait(). glibc passes argv to ELF
// constructors.
__attribute__((constructor)) static void weft_block_signals_for_run(int argc, char **argv, char **envp) {
    (void)envp;
    if (argc > 1 && argv != NULL && argv[1] != NULL && strcmp(argv[1], "run") == 0) {
        weft_block_forwarded_signals();
    }
}
