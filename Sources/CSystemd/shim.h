/* libsystemd's daemon and journal APIs, imported as they are. */
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
