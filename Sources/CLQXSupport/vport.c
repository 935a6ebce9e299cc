// The guest end of a virtio-serial port (see docs/protocol.md, "Transports"). The port is a
// character device with its own rules: while no host process has the host end open, poll(2) reports
// POLLHUP, read(2) returns 0 at once and write(2) blocks (or EAGAIN); the driver raises SIGIO (when
// O_ASYNC is set) each time the host end opens or closes. These helpers wait for a host without
// spinning and relay bytes between the port and a local stream socket that the agent's event loop
// serves like any other connection.
#define _GNU_SOURCE
#include "lqx_support.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int lqx_vport_wait_host(int port, int stop_fd) {
    // SIGIO for this thread only, blocked here and read through a signalfd; elsewhere it is ignored
    // (the agent sets SIG_IGN), so a stray one can never terminate the process.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGIO);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    int flags = fcntl(port, F_GETFL);
    if (sfd >= 0 && flags >= 0) {
        struct f_owner_ex owner = {.type = F_OWNER_TID, .pid = (pid_t)syscall(SYS_gettid)};
        if (fcntl(port, F_SETOWN_EX, &owner) != 0 || fcntl(port, F_SETSIG, SIGIO) != 0 ||
            fcntl(port, F_SETFL, flags | O_ASYNC) != 0) {
            close(sfd);
            sfd = -1;  // no SIGIO: fall back to polling once a second
        }
    }
    int result;
    for (;;) {
        struct pollfd p = {.fd = port, .events = POLLOUT};
        int n = poll(&p, 1, 0);
        if (n < 0 && errno != EINTR) { result = -errno; break; }
        if (n > 0 && (p.revents & (POLLERR | POLLNVAL))) { result = -EIO; break; }
        if (n > 0 && !(p.revents & POLLHUP)) { result = 1; break; }
        struct pollfd w[2] = {{.fd = stop_fd, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
        n = poll(w, sfd >= 0 ? 2 : 1, 1000);
        if (n < 0 && errno != EINTR) { result = -errno; break; }
        if (n > 0 && w[0].revents) { result = 0; break; }
        if (n > 0 && sfd >= 0 && w[1].revents) {
            struct signalfd_siginfo info;
            while (read(sfd, &info, sizeof info) == sizeof info) {}
        }
    }
    if (flags >= 0) fcntl(port, F_SETFL, flags);
    if (sfd >= 0) close(sfd);
    return result;
}

int lqx_vport_relay(int port, int sock, int stop_fd, size_t capacity) {
    char *up = malloc(capacity), *down = malloc(capacity);  // up: port → socket, down: socket → port
    if (!up || !down) {
        free(up);
        free(down);
        return -ENOMEM;
    }
    size_t up_len = 0, up_off = 0, down_len = 0, down_off = 0;
    int result = 0;
    while (result == 0) {
        struct pollfd p[3] = {{.fd = port}, {.fd = sock}, {.fd = stop_fd, .events = POLLIN}};
        if (up_len < capacity) p[0].events |= POLLIN;
        if (down_off < down_len) p[0].events |= POLLOUT;
        if (down_len < capacity) p[1].events |= POLLIN;
        if (up_off < up_len) p[1].events |= POLLOUT;
        if (poll(p, 3, -1) < 0) {
            if (errno == EINTR) continue;
            result = -errno;
            break;
        }
        if (p[2].revents) { result = LQX_RELAY_STOPPED; break; }
        // The host end closed: what it had not read is gone with it, and so is what it sent.
        if (p[0].revents & POLLHUP) { result = LQX_RELAY_HOST_GONE; break; }
        if (p[0].revents & (POLLERR | POLLNVAL)) { result = -EIO; break; }
        if (p[0].revents & POLLIN) {
            ssize_t n = read(port, up + up_len, capacity - up_len);
            if (n == 0) { result = LQX_RELAY_HOST_GONE; break; }
            if (n > 0) up_len += (size_t)n;
            else if (errno != EAGAIN && errno != EINTR) { result = -errno; break; }
        }
        if (up_off < up_len && (p[1].revents & (POLLOUT | POLLHUP | POLLERR))) {
            ssize_t n = send(sock, up + up_off, up_len - up_off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                up_off += (size_t)n;
                if (up_off == up_len) up_off = up_len = 0;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                result = LQX_RELAY_LOCAL_CLOSED;
                break;
            }
        }
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = recv(sock, down + down_len, capacity - down_len, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                result = LQX_RELAY_LOCAL_CLOSED;
            } else if (n > 0) {
                down_len += (size_t)n;
            }
        }
        if (down_off < down_len && ((p[0].revents & POLLOUT) || result == LQX_RELAY_LOCAL_CLOSED)) {
            ssize_t n = write(port, down + down_off, down_len - down_off);
            if (n > 0) {
                down_off += (size_t)n;
                if (down_off == down_len) down_off = down_len = 0;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                result = -errno;
            }
        }
    }
    // The local side said goodbye (e.g. a GOAWAY before closing): give its last bytes up to a second.
    if (result == LQX_RELAY_LOCAL_CLOSED) {
        for (int i = 0; i < 100 && down_off < down_len; i++) {
            struct pollfd p = {.fd = port, .events = POLLOUT};
            if (poll(&p, 1, 10) > 0 && (p.revents & POLLHUP)) break;
            ssize_t n = write(port, down + down_off, down_len - down_off);
            if (n > 0) down_off += (size_t)n;
        }
    }
    free(up);
    free(down);
    return result;
}
