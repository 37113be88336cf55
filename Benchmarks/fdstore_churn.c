/* What systemd's fd store costs PID 1 per relay (issue 22 stores a relay when it is established
 * and removes it when it ends). Run as a Type=notify service with FileDescriptorStoreMax= large:
 *   fdstore_churn FILL PAIRS DIR
 * READY=1; stores FILL sockets (FDSTORE=1, FDPOLL=0, FDNAME=r<i>, one message each, as tcpopsd
 * would per relay), touches DIR/filled and waits for DIR/go; then PAIRS times stores one more and
 * removes the oldest (FDSTOREREMOVE=1: a relay that ends for one that begins, the store's size
 * unchanged) and touches DIR/done. Benchmarks/fdstore_cost.py measures PID 1's CPU over each phase. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>

static int notify_fd = -1;
static struct sockaddr_un notify_addr;
static socklen_t notify_len;

static void notify(const char *state, int fd) {
    struct iovec iov = {.iov_base = (void *)state, .iov_len = strlen(state)};
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr m = {.msg_name = &notify_addr, .msg_namelen = notify_len, .msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(&u, 0, sizeof u);
        m.msg_control = u.buf;
        m.msg_controllen = sizeof u.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    while (sendmsg(notify_fd, &m, 0) < 0) usleep(100);  /* (a full queue: PID 1 is behind) */
}

static void store(long i) {
    int p[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) < 0) { perror("socketpair"); exit(1); }
    char s[96];
    snprintf(s, sizeof s, "FDSTORE=1\nFDPOLL=0\nFDNAME=r%ld", i);
    notify(s, p[0]);
    close(p[0]);
    close(p[1]);
}

static void touch_and_wait(const char *dir, const char *mark, const char *wait) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, mark);
    close(open(path, O_CREAT | O_WRONLY, 0644));
    if (!wait) return;
    snprintf(path, sizeof path, "%s/%s", dir, wait);
    struct stat st;
    while (stat(path, &st) < 0) usleep(10000);
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: fdstore_churn FILL PAIRS DIR\n"); return 2; }
    long fill = atol(argv[1]), pairs = atol(argv[2]);
    const char *sock = getenv("NOTIFY_SOCKET");
    if (!sock) { fprintf(stderr, "no NOTIFY_SOCKET\n"); return 2; }
    notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    memset(&notify_addr, 0, sizeof notify_addr);
    notify_addr.sun_family = AF_UNIX;
    strncpy(notify_addr.sun_path, sock, sizeof notify_addr.sun_path - 1);
    if (sock[0] == '@') notify_addr.sun_path[0] = 0;
    notify_len = offsetof(struct sockaddr_un, sun_path) + strlen(sock);
    notify("READY=1", -1);
    for (long i = 0; i < fill; i++) store(i);
    touch_and_wait(argv[3], "filled", "go");
    for (long i = 0; i < pairs; i++) {
        store(fill + i);
        char s[96];
        snprintf(s, sizeof s, "FDSTOREREMOVE=1\nFDNAME=r%ld", i);
        notify(s, -1);
    }
    touch_and_wait(argv[3], "done", NULL);
    pause();
    return 0;
}
