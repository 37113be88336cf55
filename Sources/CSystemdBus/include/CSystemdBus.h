/* What systemd is doing to this process's unit: the type of the job it runs on it now. */
#pragma once
#include <stddef.h>

/* Writes the type of the job systemd is running on the unit this process belongs to ("stop",
 * "restart", "try-restart", ...) to out, or "" when there is none. Returns 0 on success, or a
 * negative errno when it cannot tell (no unit, no system bus, no answer within timeout_usec).
 * Blocks for up to timeout_usec: call it off any event loop. */
int tcpops_unit_job_type(char *out, size_t out_len, unsigned long long timeout_usec);
