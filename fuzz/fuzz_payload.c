/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: the first byte picks the message type and schema
 * generation, the rest is a payload (properties in fuzz_common.h). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	fuzz_payload_one(data, n);
	return 0;
}
