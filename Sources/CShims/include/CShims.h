/* The few Linux calls Swift cannot reach through Glibc alone: epoll/eventfd/signalfd headers,
 * and wrappers for calls that need _GNU_SOURCE (defined only in shims.c) or are macros. */
#ifndef TCPOPS_CSHIMS_H
#define TCPOPS_CSHIMS_H
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <spawn.h>

int tcpops_accept4(int fd, struct sockaddr *addr, socklen_t *len);
/* accept4, then at once (no code between the two calls) parks the new socket in the crash keep:
 * one message on park_sock, the 16-byte entry of a client in record `slot` with no conid yet.
 * Returns accept4's result; *parked is 1 when the park succeeded. */
int tcpops_accept_parked(int fd, struct sockaddr *addr, socklen_t *len, int park_sock, unsigned int slot, int *parked);
int tcpops_pipe2(int fds[2]);
ssize_t tcpops_splice(int fd_in, int fd_out, size_t len);
int tcpops_set_pipe_size(int fd, int size);
int tcpops_pidfd_open(pid_t pid);
int tcpops_peercred(int fd, pid_t *pid, uid_t *uid, gid_t *gid);
/* Decode a wait status: returns 1 and the exit code if it exited, 2 and the signal if killed. */
int tcpops_wait_status(int status, int *value);
/* posix_spawn file action: close every fd from `from` up in the child (glibc 2.34). */
int tcpops_spawn_closefrom(posix_spawn_file_actions_t *actions, int from);
/* What an event reports of a connection's TCP state (TCP_INFO), flattened (tcp_info has bitfields). */
struct tcpops_tcp_info {
    unsigned int rtt_us, rttvar_us, total_retrans, unacked, lost, last_data_recv_ms, last_ack_recv_ms, pmtu, snd_cwnd;
};
/* 0, or -1 with errno. */
int tcpops_tcp_info(int fd, struct tcpops_tcp_info *out);

/* The CPUs this process may run on (sched_getaffinity), or the online CPUs when that fails. */
int tcpops_allowed_cpus(void);

/* The size of the block malloc gave for `p` (tests: what an object really costs). */
size_t tcpops_malloc_usable_size(void *p);

/* Names the calling thread (prctl PR_SET_NAME: the kernel keeps 15 bytes). */
void tcpops_name_thread(const char *name);

/* A 32-bit word read and written across threads (the fd table's generations). */
static inline unsigned int tcpops_load_acquire_u32(const unsigned int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void tcpops_store_release_u32(unsigned int *p, unsigned int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* The crash keep (RelayKeep): fds parked in a unix socket's queue, a shared memory file. */
/* Sends `len` bytes and `nfds` fds (at most 253) in one message; -1 with errno. */
ssize_t tcpops_send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);
/* Receives one message: its bytes into buf, up to `maxfds` fds (close-on-exec) into fds, their
 * count in *nfds (with maxfds 0 the message's fds are dropped by the kernel unseen); -1 with errno. */
ssize_t tcpops_recv_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds);
int tcpops_memfd(const char *name);
/* A TCP socket's state (TCP_ESTABLISHED = 1, TCP_CLOSE_WAIT = 8, ...), or -1. */
int tcpops_tcp_state(int fd);
/* connect(AF_UNSPEC): a TCP socket's connection is aborted at once (an RST; a connect in
 * progress stops), whoever else holds the file. */
int tcpops_disconnect(int fd);
static inline unsigned long long tcpops_fetch_add_u64(unsigned long long *p, unsigned long long v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline unsigned long long tcpops_load_u64(const unsigned long long *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void tcpops_store_u64(unsigned long long *p, unsigned long long v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

/* The git revision the build came from ("" when unknown): see Package.swift. */
const char *tcpops_git_revision(void);
#endif
