/* _GNU_SOURCE lives here, not in the header, so it never leaks into Swift's Glibc module. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/prctl.h>
#include <malloc.h>
#include <string.h>
#include <errno.h>
#include <sys/mman.h>
#include "CShims.h"

int tcpops_accept4(int fd, struct sockaddr *addr, socklen_t *len) {
    return accept4(fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int tcpops_accept_parked(int fd, struct sockaddr *addr, socklen_t *len, int park_sock, unsigned int slot, int *parked) {
    unsigned char entry[16] = {1, 0, 0, 0, slot & 0xff, (slot >> 8) & 0xff, (slot >> 16) & 0xff, (slot >> 24) & 0xff};
    *parked = 0;
    int c = accept4(fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) return c;
    int saved = errno;
    if (tcpops_send_fds(park_sock, entry, sizeof entry, &c, 1) == (ssize_t)sizeof entry) *parked = 1;
    errno = saved;
    return c;
}

int tcpops_pipe2(int fds[2]) { return pipe2(fds, O_NONBLOCK | O_CLOEXEC); }

ssize_t tcpops_splice(int fd_in, int fd_out, size_t len) {
    return splice(fd_in, NULL, fd_out, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
}

int tcpops_set_pipe_size(int fd, int size) { return fcntl(fd, F_SETPIPE_SZ, size); }

int tcpops_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int tcpops_peercred(int fd, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return -1;
    *pid = cred.pid; *uid = cred.uid; *gid = cred.gid;
    return 0;
}

int tcpops_wait_status(int status, int *value) {
    if (WIFEXITED(status)) { *value = WEXITSTATUS(status); return 1; }
    if (WIFSIGNALED(status)) { *value = WTERMSIG(status); return 2; }
    *value = 0;
    return 0;
}

int tcpops_spawn_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

/* Read by LeakSanitizer in sanitizer builds (make test-sanitize), ignored otherwise: what is not
 * ours to free at exit. The Swift runtime caches demangled type names for the life of the process
 * (ArgumentParser asks for them while it validates a command line). Built in, because hooks run
 * tcpopsctl with an environment of their own, without LSAN_OPTIONS. */
const char *__lsan_default_suppressions(void) { return "leak:swift_getTypeName\n"; }

#ifndef TCPOPS_GIT_REVISION
#define TCPOPS_GIT_REVISION ""
#endif
const char *tcpops_git_revision(void) { return TCPOPS_GIT_REVISION; }

int tcpops_tcp_info(int fd, struct tcpops_tcp_info *out) {
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0) return -1;
    out->rtt_us = ti.tcpi_rtt;
    out->rttvar_us = ti.tcpi_rttvar;
    out->total_retrans = ti.tcpi_total_retrans;
    out->unacked = ti.tcpi_unacked;
    out->lost = ti.tcpi_lost;
    out->last_data_recv_ms = ti.tcpi_last_data_recv;
    out->last_ack_recv_ms = ti.tcpi_last_ack_recv;
    out->pmtu = ti.tcpi_pmtu;
    out->snd_cwnd = ti.tcpi_snd_cwnd;
    return 0;
}

int tcpops_allowed_cpus(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return (int)sysconf(_SC_NPROCESSORS_ONLN);
    return CPU_COUNT(&set);
}

void tcpops_name_thread(const char *name) {
    (void)prctl(PR_SET_NAME, (unsigned long)name, 0UL, 0UL, 0UL);
}

size_t tcpops_malloc_usable_size(void *p) { return malloc_usable_size(p); }

ssize_t tcpops_send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    union { struct cmsghdr align; char bytes[CMSG_SPACE(sizeof(int) * 253)]; } control;
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (nfds < 0 || nfds > 253) { errno = EINVAL; return -1; }
    if (nfds > 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.bytes;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    return sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
}

ssize_t tcpops_recv_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds) {
    union { struct cmsghdr align; char bytes[CMSG_SPACE(sizeof(int) * 253)]; } control;
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (maxfds > 253) maxfds = 253;
    if (maxfds > 0) {
        msg.msg_control = control.bytes;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)maxfds);
    }
    *nfds = 0;
    ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 || maxfds == 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + sizeof(int) * (size_t)i, sizeof fd);
            if (*nfds < maxfds) fds[(*nfds)++] = fd; else close(fd);
        }
    }
    return n;
}

int tcpops_memfd(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

int tcpops_disconnect(int fd) {
    struct sockaddr sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_family = AF_UNSPEC;
    return connect(fd, &sa, sizeof sa);
}

int tcpops_tcp_state(int fd) {
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0) return -1;
    return ti.tcpi_state;
}
