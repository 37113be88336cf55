/* Runs first in tcpopsd (.preinit_array), before any library's constructor, Swift's runtime and main.
 * - Signals: a SIGHUP or SIGTERM sent while tcpopsd is still starting stays pending (the signalfd
 *   reads it once the loop runs) instead of killing the process with the default disposition.
 *   Only the dynamic loader's work comes earlier, which is why the executables link the Swift
 *   runtime statically.
 * - Inherited fds: whatever tcpopsd was given without close-on-exec (other than stdin, stdout and
 *   stderr) is marked close-on-exec, so hooks never inherit it. systemd's passed sockets are
 *   unaffected in tcpopsd itself (sd_listen_fds marks them close-on-exec as well). */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
#include <linux/close_range.h>
#include "CEarly.h"

static int blocked;

static void mark_inherited_fds_cloexec(void) {
    if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return;
    /* Kernels before 5.11: walk /proc/self/fd. */
    DIR *d = opendir("/proc/self/fd");
    if (!d) return;
    int self = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (fd > 2 && fd != self) fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC);
    }
    closedir(d);
}

static void tcpopsd_early(int argc, char **argv, char **envp) {
    (void)argc; (void)argv;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    /* Tests only: SIGUSR2 stalls the main loop (Daemon.debugStall), in no other thread. */
    for (char **e = envp; e && *e; e++)
        if (strcmp(*e, "TCPOPSD_DEBUG_STALL=1") == 0) sigaddset(&set, SIGUSR2);
    if (sigprocmask(SIG_BLOCK, &set, NULL) == 0) blocked = 1;
    signal(SIGPIPE, SIG_IGN);
    mark_inherited_fds_cloexec();
}

/* In .preinit_array: the dynamic loader calls it before the constructors of any shared library
 * (libsystemd's dependencies take milliseconds to initialise) and before the executable's own
 * constructors (the Swift runtime's). */
__attribute__((section(".preinit_array"), used))
static void (*const tcpopsd_early_entry)(int, char **, char **) = tcpopsd_early;

int tcpopsd_early_signals_blocked(void) { return blocked; }
