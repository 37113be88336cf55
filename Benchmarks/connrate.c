/* Load generator for Benchmarks/bench.py.
 *   connrate server PORT                      epoll echo server on 127.0.0.1:PORT (echoes, closes on FIN)
 *   connrate client PORT SECONDS THREADS      each thread: connect, send 32 bytes, read them back, close;
 *                                             prints connections per second over SECONDS
 *   connrate pingpong PORT SECONDS CONNS SIZE  CONNS connections (a thread each) keep one SIZE-byte
 *                                             message in flight (send, read it back, again); prints
 *                                             the round trips and their p50/p99 in microseconds
 *   connrate lifetime PORT CONNS SECONDS      opens CONNS idle connections to a relay that closes
 *                                             them after SECONDS idle; prints how late (p50/p99/max,
 *                                             ms) each close came after its connect + SECONDS */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
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

#define MAX_SAMPLES 400000
struct pp { int size; long n; double *lat; };

static void *pingpong(void *arg) {
    struct pp *p = arg;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { failed++; close(fd); return NULL; }
    char msg[65536], buf[65536];
    memset(msg, 'p', sizeof msg);
    double end = now() + seconds;
    while (p->n < MAX_SAMPLES) {
        double t0 = now();
        if (t0 >= end) break;
        if (write(fd, msg, p->size) != p->size) { failed++; break; }
        int got = 0;
        while (got < p->size) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n <= 0) { failed++; close(fd); return NULL; }
            got += n;
        }
        p->lat[p->n++] = (now() - t0) * 1e6;
    }
    close(fd);
    return NULL;
}

static int cmp(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static int lifetime(int conns, double idle) {
    int ep = epoll_create1(0);
    double *opened = calloc(conns, sizeof(double)), *late = calloc(conns, sizeof(double));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < conns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 1; }
        opened[i] = now();
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = ((uint64_t)i << 32) | (uint32_t)fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    int left = conns, n_late = 0;
    double first_close = 0, last_close = 0;
    double end = now() + idle + 30;
    struct epoll_event evs[256];
    char buf[4096];
    while (left > 0 && now() < end) {
        int n = epoll_wait(ep, evs, 256, 1000);
        double t = now();
        for (int k = 0; k < n; k++) {
            int fd = (int)(uint32_t)evs[k].data.u64, i = (int)(evs[k].data.u64 >> 32);
            ssize_t r = read(fd, buf, sizeof buf);
            if (r > 0) continue;
            late[n_late++] = (t - opened[i] - idle) * 1e3;
            if (first_close == 0) first_close = t;
            last_close = t;
            close(fd);
            left--;
        }
    }
    if (left > 0) { printf("%d of %d never closed\n", left, conns); return 1; }
    qsort(late, n_late, sizeof(double), cmp);
    printf("%d closed, late p50 %.1f ms, p99 %.1f ms, max %.1f ms (opened over %.1f ms, closed over %.1f ms)\n", n_late,
           late[n_late / 2], late[n_late * 99 / 100], late[n_late - 1], (opened[conns - 1] - opened[0]) * 1e3, (last_close - first_close) * 1e3);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "lifetime")) { port = atoi(argv[2]); return lifetime(atoi(argv[3]), atof(argv[4])); }
    if (argc >= 6 && !strcmp(argv[1], "pingpong")) {
        port = atoi(argv[2]); seconds = atof(argv[3]);
        int conns = atoi(argv[4]), size = atoi(argv[5]);
        if (conns < 1 || conns > 256 || size < 1 || size > 65536) { fprintf(stderr, "1-256 connections, 1-65536 bytes\n"); return 64; }
        pthread_t t[256];
        struct pp p[256];
        for (int i = 0; i < conns; i++) {
            p[i] = (struct pp){.size = size, .lat = malloc(sizeof(double) * MAX_SAMPLES)};
            pthread_create(&t[i], NULL, pingpong, &p[i]);
        }
        long total = 0;
        for (int i = 0; i < conns; i++) { pthread_join(t[i], NULL); total += p[i].n; }
        double *all = malloc(sizeof(double) * (total ? total : 1));
        long k = 0;
        for (int i = 0; i < conns; i++) { memcpy(all + k, p[i].lat, sizeof(double) * p[i].n); k += p[i].n; }
        qsort(all, total, sizeof(double), cmp);
        if (total == 0) { printf("0 round trips, %ld failed\n", (long)failed); return 1; }
        printf("%ld round trips, p50 %.1f us, p99 %.1f us, %ld failed\n", total, all[total / 2], all[total * 99 / 100], (long)failed);
        return 0;
    }
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
    fprintf(stderr, "usage: connrate server PORT | connrate client PORT SECONDS THREADS | connrate pingpong PORT SECONDS CONNS SIZE | connrate lifetime PORT CONNS SECONDS\n");
    return 64;
}
