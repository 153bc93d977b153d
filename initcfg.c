/* SPDX-License-Identifier: Apache-2.0 */
/* initcfg.c - MSB_* parsers. STUB: the init issue fills this in. */
#include "initcfg.h"
typedef int initcfg_placeholder;
