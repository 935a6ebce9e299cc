#ifndef LQX_SUPPORT_H
#define LQX_SUPPORT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/// Extends a CRC-32C (Castagnoli) over `len` bytes. Start with crc = 0.
/// Uses the SSE4.2 crc32 instruction when the CPU has it, else slicing-by-8 tables.
uint32_t lqx_crc32c(uint32_t crc, const void *data, size_t len);

/// 1 when lqx_crc32c runs on the CPU's crc32 instruction.
int lqx_crc32c_is_hardware(void);

/// Incremental SHA-256 (uses the x86 SHA extensions when present).
typedef struct lqx_sha256 {
    uint32_t h[8];
    uint64_t length;
    uint8_t buffer[64];
    size_t used;
} lqx_sha256;
void lqx_sha256_init(lqx_sha256 *ctx);
void lqx_sha256_update(lqx_sha256 *ctx, const void *data, size_t len);
void lqx_sha256_final(lqx_sha256 *ctx, uint8_t digest[32]);
/// 1 when SHA-256 runs on the CPU's SHA extensions.
int lqx_sha256_is_hardware(void);
/// Tests only: 1 forces the portable implementation, 0 returns to detection.
void lqx_sha256_force_portable(int portable);

/// What lqx_spawn should do in the child.
typedef struct lqx_spawn_options {
    const char *path;          /* executable, already resolved */
    char *const *argv;         /* NULL terminated */
    char *const *envp;         /* NULL terminated */
    const char *cwd;           /* NULL: unchanged */
    int stdin_fd;              /* dup2'ed to 0 (ignored when pty_slave_path is set) */
    int stdout_fd;             /* dup2'ed to 1 */
    int stderr_fd;             /* dup2'ed to 2 */
    const char *pty_slave_path;/* non-NULL: new session, this tty becomes the controlling tty and fd 0/1/2 */
    int set_ids;               /* 1: setgroups/setgid/setuid below */
    uid_t uid;
    gid_t gid;
    const gid_t *groups;
    size_t ngroups;
} lqx_spawn_options;

/// Forks and execs. The child runs in a new process group (or a new session with a pty), with all
/// other descriptors closed and default signal dispositions. Returns the pid, or -1 with
/// *child_errno set (errno of the failing step in the child, e.g. ENOENT from execve) and
/// *failed_step set to a static string naming the step.
pid_t lqx_spawn(const lqx_spawn_options *options, int *child_errno, const char **failed_step);

/// Opens a new pseudo-terminal master (non-blocking, close-on-exec); writes the slave path.
int lqx_open_pty(char *slave_path, size_t slave_path_len, unsigned short rows, unsigned short cols);

/// Sets a pty's window size.
int lqx_set_window_size(int fd, unsigned short rows, unsigned short cols);

/// Decodes a waitpid status: returns 0 exited (code in *value), 1 signalled (signal in *value,
/// *core set), -1 other.
int lqx_decode_wait_status(int status, int *value, int *core);



/// Creates a listening AF_VSOCK stream socket on (VMADDR_CID_ANY, port). Returns fd or -1 (errno).
int lqx_vsock_listen(uint32_t port, int backlog);

/// Accepts one connection (blocking, close-on-exec); writes the peer's CID and port. -1 on error.
int lqx_vsock_accept(int listen_fd, uint32_t *peer_cid, uint32_t *peer_port);
/// pidfd_open(2) with close-on-exec: a descriptor that becomes readable when `pid` exits.
/// -1 with errno (ENOSYS before Linux 5.3).
int lqx_pidfd_open(pid_t pid);

/// A one-shot readiness reactor (epoll): lqx_reactor_add arms `fd` once for readability (or
/// writability); lqx_reactor_wait blocks until at least one armed descriptor is ready, removes the
/// ready ones from the set, writes them to `ready` (at most `max`, up to 64) and returns how many;
/// it retries EINTR. lqx_reactor_remove disarms a descriptor. -1 with errno on error.
int lqx_reactor_create(void);
int lqx_reactor_add(int reactor, int fd, int writable);
int lqx_reactor_remove(int reactor, int fd);
int lqx_reactor_wait(int reactor, int *ready, int max);

/// Tunes glibc malloc for a process that moves large buffers (see vsock.c).
void lqx_tune_malloc(void);

/// Unmaps the resident pages of read-only private file mappings that hold no private page (code
/// and constants, reloaded from the page cache on the next touch) and trims the heap. Returns the
/// kilobytes released from the page tables, or -1 when /proc/self/smaps cannot be read.
long lqx_release_clean_mappings(void);

/// Sets O_NONBLOCK on a descriptor (its open file description).
int lqx_set_nonblocking(int fd);

/// pipe2(fds, O_CLOEXEC).
int lqx_pipe_cloexec(int fds[2]);

/// Waits until the host end of the virtio-serial port `port` (non-blocking descriptor) is open.
/// Sleeps on SIGIO from the driver (thread-directed, read via a signalfd; the caller's process should
/// ignore SIGIO) with a one-second poll as a fallback. Returns 1 once the host is connected, 0 when
/// `stop_fd` became readable, or -errno.
int lqx_vport_wait_host(int port, int stop_fd);

#define LQX_RELAY_HOST_GONE 1
#define LQX_RELAY_LOCAL_CLOSED 2
#define LQX_RELAY_STOPPED 3

/// Copies bytes both ways between a virtio-serial port and a stream socket (both non-blocking) with
/// two buffers of `capacity` bytes, until the host end closes (LQX_RELAY_HOST_GONE), the socket's
/// peer closes (LQX_RELAY_LOCAL_CLOSED; its last bytes are still written to the port), `stop_fd`
/// becomes readable (LQX_RELAY_STOPPED), or an error (-errno). A full buffer stops reading its
/// source, so backpressure passes through.
int lqx_vport_relay(int port, int sock, int stop_fd, size_t capacity);

/// libFuzzer's driver; defined only in binaries linked with -sanitize=fuzzer (fuzz/FrameFuzz).
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

/// reboot(2) with a LINUX_REBOOT_CMD_* value.
int lqx_reboot(int command);

/// Checks that AF_VSOCK works to the local CID 1 (vsock_loopback): listens on `port` and connects to
/// (1, port) within `timeout_ms`. Returns 0 when it works, else an errno value.
int lqx_vsock_loopback_probe(uint32_t port, int timeout_ms);

#endif
