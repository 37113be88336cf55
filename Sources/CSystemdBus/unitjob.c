/* Asks systemd over the system bus which job it runs on our unit, so that SIGTERM can tell
 * `systemctl restart` (hand the relays to the fd store) from `systemctl stop` (drain them). Plain
 * C: sd-bus's convenient calls are variadic, which Swift cannot call. */
#include "CSystemdBus.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-login.h>

#define SYSTEMD "org.freedesktop.systemd1"

int tcpops_unit_job_type(char *out, size_t out_len, unsigned long long timeout_usec) {
    sd_bus *bus = NULL;
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message *reply = NULL;
    char *unit = NULL, *path = NULL, *type = NULL;
    const char *job = NULL;
    uint32_t id = 0;
    int r;

    if (out_len == 0) return -EINVAL;
    out[0] = 0;
    r = sd_pid_get_unit(0, &unit);
    if (r < 0) goto done;
    r = sd_bus_open_system(&bus);
    if (r < 0) goto done;
    r = sd_bus_set_method_call_timeout(bus, timeout_usec);
    if (r < 0) goto done;
    r = sd_bus_path_encode("/org/freedesktop/systemd1/unit", unit, &path);
    if (r < 0) goto done;
    r = sd_bus_get_property(bus, SYSTEMD, path, SYSTEMD ".Unit", "Job", &error, &reply, "(uo)");
    if (r < 0) goto done;
    r = sd_bus_message_enter_container(reply, 'r', "uo");
    if (r < 0) goto done;
    r = sd_bus_message_read_basic(reply, 'u', &id);
    if (r < 0) goto done;
    r = sd_bus_message_read_basic(reply, 'o', &job);
    if (r < 0) goto done;
    r = 0;
    if (id == 0) goto done; /* no job: a signal sent by hand (kill, systemctl kill) */
    r = sd_bus_get_property_string(bus, SYSTEMD, job, SYSTEMD ".Job", "JobType", &error, &type);
    if (r < 0) goto done;
    snprintf(out, out_len, "%s", type);
    r = 0;
done:
    free(type);
    free(path);
    free(unit);
    sd_bus_message_unref(reply);
    sd_bus_error_free(&error);
    sd_bus_flush_close_unref(bus);
    return r < 0 ? r : 0;
}
