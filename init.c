/* SPDX-License-Identifier: Apache-2.0 */
/* init.c - PID 1 duties (SPEC 10).  STUB: the init issue replaces this file. */
#include <sys/reboot.h>
#include <unistd.h>

#include "agent.h"

int init_run(struct agent *a) { (void)a; return 0; }

void init_power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}
