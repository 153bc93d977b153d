/* SPDX-License-Identifier: Apache-2.0 */
/* initcfg.h - strict parsers for the MSB_* boot configuration (SPEC 10).
 * STUB: the init issue fills this in. */
#ifndef AGENTD_INITCFG_H
#define AGENTD_INITCFG_H
#endif
