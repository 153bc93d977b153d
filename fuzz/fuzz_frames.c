/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: stream frame decoder in random splits, then envelope
 * and payload decoding of every frame (properties in fuzz_common.h). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	fuzz_frames_one(data, n);
	return 0;
}
