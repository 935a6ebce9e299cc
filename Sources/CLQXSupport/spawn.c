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

pid_t lqx_spawn(const lqx_spawn_options *o, int *child_errno, const char **failed_step) {
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
            /* Move sources above 2 first so dup2 order cannot clobber them. */
            for (int i = 0; i < 3; i++) {
                if (fds[i] >= 0 && fds[i] < 3) {
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
