/* SPDX-License-Identifier: Apache-2.0 */
/* Placeholder: the init helper replaces this with the initcfg tests. */
#include "unit.h"

void test_initcfg(void) {}
