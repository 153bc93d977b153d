/* SPDX-License-Identifier: Apache-2.0 */
/* fsops.c - filesystem operations and file transfer (SPEC 6).  STUB: the
 * filesystem issue replaces this file. */
#include "agent.h"

void fs_request(struct agent *a, uint32_t id, const struct fs_request *rq)
{
	struct msg m = { .type = MSG_FS_RESPONSE, .gen = PROTO_GEN_SEED };
	(void)rq;
	m.u.fs_response.ok = false;
	m.u.fs_response.error = "not implemented";
	agent_send(a, id, &m);
}

void fs_data(struct agent *a, uint32_t id, struct slice data) { (void)a; (void)id; (void)data; }
void fs_pump(struct agent *a) { (void)a; }
bool fs_id_live(const struct agent *a, uint32_t id) { (void)a; (void)id; return false; }
void fs_abort_all(struct agent *a) { (void)a; }
