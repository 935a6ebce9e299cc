#define _GNU_SOURCE
#include "lqx_support.h"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include <spawn.h>
#include <pthread.h>

struct child_error {
    int err;
    int step;
};

static const char *const steps[] = {
    "setsid", "setpgid", "open pty", "controlling tty", "dup2", "setgroups", "setgid", "setuid", "chdir", "execve",
};

static void fail(int fd, int step) {
    struct child_error e = {errno, step};
    ssize_t r = write(fd, &e, sizeof e);
    (void)r;
    _exit(127);
}

static void close_other_fds(int keep) {
#ifdef SYS_close_range
    if (keep > 3) syscall(SYS_close_range, 3, keep - 1, 0);
    if (syscall(SYS_close_range, keep + 1, ~0U, 0) == 0) return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536) max = 65536;
    for (int fd = 3; fd < max; fd++)
        if (fd != keep) close(fd);
}

/* Signals a child must have reset to SIG_DFL. exec(2) already resets caught signals; only ignored
   ones survive it. Asking posix_spawn to reset every signal costs one sigaction(2) per signal in
   the child while the parent waits (vfork), which under emulation is a visible part of an exec.
   The set is the signals ignored when the agent first spawns (inherited from its parent), SIGPIPE
   and SIGIO (which the agent ignores before serving) and glibc's internal signals. The agent
   ignores no other signal later. */
static sigset_t ignored_signals;
static pthread_once_t ignored_signals_once = PTHREAD_ONCE_INIT;

static void compute_ignored_signals(void) {
    sigemptyset(&ignored_signals);
    for (int s = 1; s < NSIG; s++) {
        struct sigaction sa;
        if (sigaction(s, NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_IGN)
            sigaddset(&ignored_signals, s);
    }
    sigaddset(&ignored_signals, SIGPIPE);
    sigaddset(&ignored_signals, SIGIO);
    /* glibc reserves the signals below SIGRTMIN for itself (32, 33); its sigaddset refuses them, and
       its posix_spawn sets them to SIG_IGN in the child unless they are in this set, so a command
       would start with them ignored. Set their bits directly. */
    unsigned long *words = (unsigned long *)&ignored_signals;
    const int bits = 8 * (int)sizeof(unsigned long);
    for (int s = 32; s < SIGRTMIN; s++) words[(s - 1) / bits] |= 1UL << ((s - 1) % bits);
}

/* posix_spawn uses clone(CLONE_VM|CLONE_VFORK) in glibc: no page-table copy of this (large,
   multi-threaded) process, so it is several times faster than fork. It cannot change user ids,
   so that case takes the fork path below. */
static pid_t spawn_vfork(const lqx_spawn_options *o, int *child_errno, const char **failed_step) {
    posix_spawnattr_t attr;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_init(&fa);
    sigset_t none;
    sigemptyset(&none);
    pthread_once(&ignored_signals_once, compute_ignored_signals);
    short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &ignored_signals);
    if (o->pty_slave_path) {
        /* setsid() runs before the file actions, so opening the tty makes it the controlling one. */
        flags |= POSIX_SPAWN_SETSID;
        posix_spawn_file_actions_addopen(&fa, 0, o->pty_slave_path, O_RDWR, 0);
        posix_spawn_file_actions_adddup2(&fa, 0, 1);
        posix_spawn_file_actions_adddup2(&fa, 0, 2);
    } else {
        flags |= POSIX_SPAWN_SETPGROUP;
        posix_spawnattr_setpgroup(&attr, 0);
        posix_spawn_file_actions_adddup2(&fa, o->stdin_fd, 0);
        posix_spawn_file_actions_adddup2(&fa, o->stdout_fd, 1);
        posix_spawn_file_actions_adddup2(&fa, o->stderr_fd, 2);
    }
    posix_spawnattr_setflags(&attr, flags);
    if (o->cwd) posix_spawn_file_actions_addchdir_np(&fa, o->cwd);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    pid_t pid = -1;
    int rc = posix_spawn(&pid, o->path, &fa, &attr, o->argv, o->envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
        *child_errno = rc;
        *failed_step = "spawn";
        return -1;
    }
    return pid;
}

pid_t lqx_spawn(const lqx_spawn_options *o, int *child_errno, const char **failed_step) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    int low_fds = !o->pty_slave_path && (o->stdin_fd < 3 || o->stdout_fd < 3 || o->stderr_fd < 3);
    if (!o->set_ids && !low_fds) return spawn_vfork(o, child_errno, failed_step);
#endif
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) {
        *child_errno = errno;
        *failed_step = "pipe";
        return -1;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0) {
        for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        int w = report[1];
        if (w < 3) {
            int moved = fcntl(w, F_DUPFD_CLOEXEC, 3);
            if (moved < 0) fail(w, 4);
            w = moved;
        }
        if (o->pty_slave_path) {
            if (setsid() < 0) fail(w, 0);
            int tty = open(o->pty_slave_path, O_RDWR);
            if (tty < 0) fail(w, 2);
            if (ioctl(tty, TIOCSCTTY, 0) != 0) fail(w, 3);
            if (dup2(tty, 0) < 0 || dup2(tty, 1) < 0 || dup2(tty, 2) < 0) fail(w, 4);
            if (tty > 2) close(tty);
        } else {
            if (setpgid(0, 0) != 0) fail(w, 1);
            int fds[3] = {o->stdin_fd, o->stdout_fd, o->stderr_fd};
            /* -1: /dev/null. Then move sources above 2 so dup2 order cannot clobber them. */
            for (int i = 0; i < 3; i++) {
                if (fds[i] < 0) {
                    fds[i] = open("/dev/null", O_RDWR | O_CLOEXEC);
                    if (fds[i] < 0) fail(w, 4);
                }
                if (fds[i] < 3) {
                    fds[i] = fcntl(fds[i], F_DUPFD, 3);
                    if (fds[i] < 0) fail(w, 4);
                }
            }
            for (int i = 0; i < 3; i++)
                if (dup2(fds[i], i) < 0) fail(w, 4);
        }
        close_other_fds(w);
        if (o->set_ids) {
            if (setgroups(o->ngroups, o->groups) != 0) fail(w, 5);
            if (setgid(o->gid) != 0) fail(w, 6);
            if (setuid(o->uid) != 0) fail(w, 7);
        }
        if (o->cwd && chdir(o->cwd) != 0) fail(w, 8);
        pthread_sigmask(SIG_SETMASK, &none, NULL);
        execve(o->path, o->argv, o->envp);
        fail(w, 9);
    }
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(report[1]);
    if (pid < 0) {
        close(report[0]);
        *child_errno = saved;
        *failed_step = "fork";
        return -1;
    }
    struct child_error e;
    ssize_t n;
    do {
        n = read(report[0], &e, sizeof e);
    } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n == (ssize_t)sizeof e) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        *child_errno = e.err;
        *failed_step = (e.step >= 0 && e.step < (int)(sizeof steps / sizeof steps[0])) ? steps[e.step] : "unknown";
        return -1;
    }
    return pid;
}

int lqx_open_pty(char *slave_path, size_t slave_path_len, unsigned short rows, unsigned short cols) {
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (m < 0) return -1;
    if (grantpt(m) != 0 || unlockpt(m) != 0 || ptsname_r(m, slave_path, slave_path_len) != 0) {
        int e = errno;
        close(m);
        errno = e;
        return -1;
    }
    lqx_set_window_size(m, rows, cols);
    return m;
}

int lqx_set_window_size(int fd, unsigned short rows, unsigned short cols) {
    struct winsize ws = {.ws_row = rows ? rows : 24, .ws_col = cols ? cols : 80};
    return ioctl(fd, TIOCSWINSZ, &ws);
}

int lqx_decode_wait_status(int status, int *value, int *core) {
    *core = 0;
    if (WIFEXITED(status)) {
        *value = WEXITSTATUS(status);
        return 0;
    }
    if (WIFSIGNALED(status)) {
        *value = WTERMSIG(status);
        *core = WCOREDUMP(status) ? 1 : 0;
        return 1;
    }
    return -1;
}
