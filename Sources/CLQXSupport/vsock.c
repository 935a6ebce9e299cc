#define _GNU_SOURCE
#include "lqx_support.h"
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/epoll.h>
#include <malloc.h>

int lqx_vsock_listen(uint32_t port, int backlog) {
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_vm addr;
    memset(&addr, 0, sizeof addr);
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = VMADDR_CID_ANY;
    addr.svm_port = port;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, backlog) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int lqx_vsock_accept(int listen_fd, uint32_t *peer_cid, uint32_t *peer_port) {
    struct sockaddr_vm addr;
    socklen_t len = sizeof addr;
    int fd;
    do {
        fd = accept4(listen_fd, (struct sockaddr *)&addr, &len, SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return -1;
    *peer_cid = addr.svm_cid;
    *peer_port = addr.svm_port;
    return fd;
}

int lqx_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int lqx_pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
    /* pidfd_open descriptors are always close-on-exec. */
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    errno = ENOSYS;
    return -1;
#endif
}

int lqx_reactor_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int lqx_reactor_add(int reactor, int fd, int writable) {
    struct epoll_event event = {.events = (writable ? EPOLLOUT : EPOLLIN) | EPOLLONESHOT, .data.fd = fd};
    return epoll_ctl(reactor, EPOLL_CTL_ADD, fd, &event);
}

int lqx_reactor_remove(int reactor, int fd) { return epoll_ctl(reactor, EPOLL_CTL_DEL, fd, NULL); }

int lqx_reactor_wait(int reactor, int *ready, int max) {
    struct epoll_event events[64];
    if (max > 64) max = 64;
    int n;
    do {
        n = epoll_wait(reactor, events, max, -1);
    } while (n < 0 && errno == EINTR);
    for (int i = 0; i < n; i++) {
        ready[i] = events[i].data.fd;
        epoll_ctl(reactor, EPOLL_CTL_DEL, ready[i], NULL);
    }
    return n;
}

int lqx_set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

int lqx_reboot(int command) { return reboot(command); }

int lqx_vsock_loopback_probe(uint32_t port, int timeout_ms) {
    int listener = lqx_vsock_listen(port, 1);
    if (listener < 0) return errno;
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        int e = errno;
        close(listener);
        return e;
    }
    struct sockaddr_vm addr;
    memset(&addr, 0, sizeof addr);
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = VMADDR_CID_LOCAL;
    addr.svm_port = port;
    int result = 0;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (errno != EINPROGRESS) {
            result = errno;
        } else {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int n = poll(&p, 1, timeout_ms);
            if (n <= 0) {
                result = n == 0 ? ETIMEDOUT : errno;
            } else {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                result = err;
            }
        }
    }
    close(fd);
    close(listener);
    return result;
}

void lqx_tune_malloc(void) {
    /* Transfer buffers (256 KiB frames, 1 MiB file blocks) come from the heap and are reused
     * instead of being mmap'ed, faulted in, zeroed and unmapped each time; up to 4 MiB of free
     * heap is kept before trimming. */
    mallopt(M_MMAP_THRESHOLD, 2 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 4 * 1024 * 1024);
}
