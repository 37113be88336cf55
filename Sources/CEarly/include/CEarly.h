/* What tcpopsd must do before any Swift code runs. */
#ifndef TCPOPSD_CEARLY_H
#define TCPOPSD_CEARLY_H
/* 1 once early.c's .preinit_array entry has blocked SIGTERM/SIGINT/SIGHUP and ignored SIGPIPE. */
int tcpopsd_early_signals_blocked(void);
#endif
