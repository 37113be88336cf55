/* Load generator for Benchmarks/run.sh.
 *   connrate server PORT                      epoll echo server on 127.0.0.1:PORT (echoes, closes on FIN)
 *   connrate client PORT SECONDS THREADS      each thread: connect, send 32 bytes, read them back, close;
 *                                             prints connections per second over SECONDS */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int port;
static double seconds;
static atomic_long done, failed;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *client(void *arg) {
    (void)arg;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char msg[32], buf[64];
    memset(msg, 'x', sizeof msg);
    double end = now() + seconds;
    while (now() < end) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 || write(fd, msg, sizeof msg) != sizeof msg) {
            failed++; close(fd); continue;
        }
        size_t got = 0;
        while (got < sizeof msg) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n <= 0) break;
            got += n;
        }
        if (got == sizeof msg) done++; else failed++;
        close(fd);
    }
    return NULL;
}

static int server(void) {
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) { perror("bind"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    char buf[65536];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r > 0) { if (write(fd, buf, r) < 0) {} }
            else if (r == 0 || errno != EAGAIN) { close(fd); }
        }
    }
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "server")) { port = atoi(argv[2]); return server(); }
    if (argc >= 5 && !strcmp(argv[1], "client")) {
        port = atoi(argv[2]); seconds = atof(argv[3]);
        int threads = atoi(argv[4]);
        pthread_t t[256];
        double t0 = now();
        for (int i = 0; i < threads && i < 256; i++) pthread_create(&t[i], NULL, client, NULL);
        for (int i = 0; i < threads && i < 256; i++) pthread_join(t[i], NULL);
        double el = now() - t0;
        printf("%.0f connections/s (%ld in %.1f s, %ld failed)\n", done / el, (long)done, el, (long)failed);
        return 0;
    }
    fprintf(stderr, "usage: connrate server PORT | connrate client PORT SECONDS THREADS\n");
    return 64;
}
