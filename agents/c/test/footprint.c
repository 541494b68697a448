/* footprint.c: the RAM a device gives the core, as .bss: one flota_agent.
 * Compiled with the core for Cortex-M4 by `make footprint`. */
#include "flota.h"

flota_agent flota_footprint_agent;
