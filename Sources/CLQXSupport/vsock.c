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
