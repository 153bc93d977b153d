/* SPDX-License-Identifier: Apache-2.0 */
/* userdb.h - users and groups from /etc/passwd and /etc/group. */
#ifndef AGENTD_USERDB_H
#define AGENTD_USERDB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define USERDB_PASSWD "/etc/passwd"
#define USERDB_GROUP  "/etc/group"

struct user_entry {
	uint32_t uid, gid;
	char name[64];
	char home[256];
};

/* A u32 in decimal, one leading '+' allowed (as the reference's user-spec
 * parser does, SPEC 5.5). */
bool userdb_parse_id(const char *s, uint32_t *out);
/* passwd and group are the files' paths (USERDB_PASSWD, USERDB_GROUP;
 * tests use their own).  Only regular files are read, up to 4 MiB.
 * 0 when found, -1 when not (or the file cannot be read). */
int userdb_user_by_name(const char *passwd, const char *name,
			struct user_entry *u);
int userdb_user_by_uid(const char *passwd, uint32_t uid, struct user_entry *u);
int userdb_group_by_name(const char *group, const char *name, uint32_t *gid);
/* base, then every group that lists user as a member; count <= max. */
int userdb_group_list(const char *group, const char *user, uint32_t base,
		      uint32_t *groups, int max);

#endif
