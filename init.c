/* SPDX-License-Identifier: Apache-2.0 */
/*
 * init.c - PID 1 duties (SPEC 10), in the spec's order, plus loading the
 * kernel modules a distro kernel needs before the port can be found.
 *
 * Every step returns 0 or -1 with a message in a struct cfg_err; init_run
 * is the one place that reports it: on the console, then power off (a
 * PID 1 that exits panics the kernel).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "agent.h"
#include "fmt.h"
#include "initcfg.h"
#include "netlink.h"

#define FILE_MAX     (4u * 1024 * 1024)  /* modules.dep, profile, CA bundle */
#define MODULES_MAX  64                  /* modules loaded in one boot */
#define MODULE_INIT_COMPRESSED_FILE 4

/* Loaded when MSB_MODULES is not given, if present as modules. */
static const char default_modules[] =
	"virtio_mmio,virtio_pci,virtio_console,virtio_blk,virtio_net,virtio_rng,fuse,virtiofs";

static const char *env(const char *name)
{
	return cfg_value(getenv(name));
}

/* ---- small file helpers ---- */

static int mkdir_p(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	size_t n = strlen(path);

	if (n >= sizeof(buf))
		return errno = ENAMETOOLONG, -1;
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1; ; p++) {
		if (*p != '/' && *p)
			continue;
		char c = *p;

		*p = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -1;
		if (!c)
			return 0;
		*p = c;
	}
}

/* Open for writing only a regular file that is not a symlink: an image's
 * /etc/hosts -> /dev/vda or -> a shared volume, or a FIFO there, must not
 * turn PID 1's writes elsewhere or block it. */
static int open_regular(const char *path, int flags)
{
	int fd = open(path, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
	struct stat st;

	if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
		close(fd);
		return errno = EINVAL, -1;
	}
	return fd;
}

static int write_file(const char *path, const void *data, size_t n, int flags)
{
	int fd = open_regular(path, O_WRONLY | O_CREAT | flags);
	const char *p = data;

	if (fd < 0)
		return -1;
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = errno;

			close(fd);
			return errno = e, -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return close(fd);
}

/* Whole file into a NUL-terminated malloc'd buffer, at most max bytes. */
static char *read_file(const char *path, size_t max, size_t *len)
{
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	size_t n = 0, cap = 4096;
	char *buf = NULL;
	struct stat st;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		errno = EINVAL;  /* a FIFO would block PID 1, a device never end */
		goto fail;
	}
	for (;;) {
		char *nb = n + 1 >= cap || !buf ? realloc(buf, cap *= 2) : buf;
		ssize_t r;

		if (!nb)
			goto fail;
		buf = nb;
		r = read(fd, buf + n, cap - n - 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			goto fail;
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > max) {
			errno = EFBIG;
			goto fail;
		}
	}
	close(fd);
	buf[n] = '\0';
	*len = n;
	return buf;
fail:
	free(buf);
	close(fd);
	return NULL;
}

/* ---- 10.1 essential filesystems ---- */

struct fs_mount {
	const char *source, *target, *type;
	unsigned long flags;
};

static const struct fs_mount essential[] = {
	{ "devtmpfs", "/dev", "devtmpfs", MS_RELATIME },
	{ "proc", "/proc", "proc", MS_NODEV | MS_NOEXEC | MS_NOSUID | MS_RELATIME },
	{ "sysfs", "/sys", "sysfs", MS_NODEV | MS_NOEXEC | MS_NOSUID | MS_RELATIME },
	{ "cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NODEV | MS_NOEXEC | MS_NOSUID | MS_RELATIME },
	{ "devpts", "/dev/pts", "devpts", MS_NOEXEC | MS_NOSUID | MS_RELATIME },
	{ "tmpfs", "/dev/shm", "tmpfs", MS_NOEXEC | MS_NOSUID | MS_RELATIME },
};

static int mount_essential(struct cfg_err *err)
{
	struct stat st;

	for (size_t i = 0; i < sizeof(essential) / sizeof(essential[0]); i++) {
		const struct fs_mount *m = &essential[i];

		if (mkdir(m->target, 0755) < 0 && errno != EEXIST)
			return cfg_fail(err, "mkdir %s: %s", m->target, strerror(errno));
		if (mount(m->source, m->target, m->type, m->flags, NULL) < 0 && errno != EBUSY)
			return cfg_fail(err, "mount %s: %s", m->target, strerror(errno));
	}
	if (lstat("/dev/fd", &st) < 0 && symlink("/proc/self/fd", "/dev/fd") < 0)
		return cfg_fail(err, "symlink /dev/fd: %s", strerror(errno));
	return 0;
}

/* fds 0-2 closed at entry would later alias the port or epoll fds. */
static void ensure_console_fds(void)
{
	for (int fd = 0; fd < 3; fd++) {
		if (fcntl(fd, F_GETFD) >= 0)
			continue;
		int c = open("/dev/console", O_RDWR);

		if (c < 0)
			c = open("/dev/null", O_RDWR);
		if (c >= 0 && c != fd) {
			dup2(c, fd);
			close(c);
		}
	}
}

static void protect_from_oom(void)
{
	if (write_file("/proc/self/oom_score_adj", "-1000", 5, O_TRUNC) < 0)
		agent_log("oom_score_adj: %s", strerror(errno));
}

/* ---- kernel modules ---- */

struct modules {
	char dir[256];
	char *dep;                   /* modules.dep, NUL-terminated */
	char *cmdline;               /* /proc/cmdline, for name.param=value */
	const char *loaded[MODULES_MAX];
	unsigned nloaded;
	bool trace;                  /* agentd.trace=1: time each module */
};

/* Module names compare with '-' and '_' as the same character. */
static bool same_name(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((a[i] == '-' ? '_' : a[i]) != (b[i] == '-' ? '_' : b[i]))
			return false;
	return true;
}

/* Name part of a module path: "kernel/fs/fuse/virtiofs.ko.xz" -> "virtiofs". */
static const char *module_name(const char *path, size_t len, size_t *nlen)
{
	const char *base = memrchr(path, '/', len), *ko;

	base = base ? base + 1 : path;
	ko = memmem(base, len - (size_t)(base - path), ".ko", 3);
	*nlen = ko ? (size_t)(ko - base) : len - (size_t)(base - path);
	return base;
}

/* The modules.dep line "path: deps..." of a module, by name or by path. */
static char *dep_line(struct modules *m, const char *key, size_t klen, bool by_path)
{
	for (char *line = m->dep; *line; ) {
		char *colon = strchr(line, ':'), *nl = strchr(line, '\n');

		if (!nl)
			nl = line + strlen(line);
		if (colon && colon < nl) {
			size_t plen = (size_t)(colon - line), nlen;
			const char *name = module_name(line, plen, &nlen);

			if (by_path ? plen == klen && !memcmp(line, key, klen)
				    : nlen == klen && same_name(name, key, klen))
				return line;
		}
		line = *nl ? nl + 1 : nl;
	}
	return NULL;
}

/* Words "name.k=v" of the kernel command line, as "k=v k2=v2" (what modprobe does). */
static void module_params(const struct modules *m, const char *name, size_t nlen,
			  char *out, size_t n)
{
	size_t len = 0;

	out[0] = '\0';
	for (const char *p = m->cmdline; p && *p; ) {
		size_t l;

		p += strspn(p, " \t\n");
		l = strcspn(p, " \t\n");
		if (l > nlen + 1 && p[nlen] == '.' && same_name(p, name, nlen) &&
		    len + l + 2 < n) {
			if (len)
				out[len++] = ' ';
			memcpy(out + len, p + nlen + 1, l - nlen - 1);
			len += l - nlen - 1;
			out[len] = '\0';
		}
		p += l;
	}
}

static int finit_module_path(struct modules *m, const char *rel, size_t rlen,
			     struct cfg_err *err)
{
	char path[PATH_MAX], params[512];
	size_t nlen;
	const char *name = module_name(rel, rlen, &nlen);
	uint64_t t0;
	int fd, flags = 0;

	if (fmt(path, sizeof(path), "%s/%.*s", m->dir, (int)rlen, rel) >= (int)sizeof(path))
		return cfg_fail(err, "module path too long");
	module_params(m, name, nlen, params, sizeof(params));
	/* .ko.xz / .ko.zst / .ko.gz: the kernel decompresses (5.17+). */
	if (rlen < 3 || memcmp(rel + rlen - 3, ".ko", 3) != 0)
		flags = MODULE_INIT_COMPRESSED_FILE;
	t0 = m->trace ? agent_clock_ns(CLOCK_BOOTTIME) : 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cfg_fail(err, "module %s: %s", path, strerror(errno));
	if (syscall(SYS_finit_module, fd, params, flags) < 0 && errno != EEXIST) {
		int e = errno;

		close(fd);
		return cfg_fail(err, "load module %s: %s", path, strerror(e));
	}
	close(fd);
	if (m->trace)
		agent_log("boot module %.*s: %llu us", (int)nlen, name,
			  (unsigned long long)(agent_clock_ns(CLOCK_BOOTTIME) - t0) / 1000);
	return 0;
}

/*
 * Load the module of a modules.dep line after its dependencies.  Each
 * dependency's own line lists its dependencies, so loading them
 * recursively gives a valid order whatever order a line lists them in.
 */
static int load_line(struct modules *m, char *line, unsigned depth, struct cfg_err *err)
{
	char *colon = strchr(line, ':'), *p = colon + 1;

	for (unsigned i = 0; i < m->nloaded; i++)
		if (m->loaded[i] == line)
			return 0;
	if (depth > 16 || m->nloaded == MODULES_MAX)
		return cfg_fail(err, "module dependencies too deep or too many");
	m->loaded[m->nloaded++] = line;
	for (;;) {
		size_t l;
		char *dl;

		p += strspn(p, " \t");
		l = strcspn(p, " \t\n");
		if (!l)
			break;
		dl = dep_line(m, p, l, true);
		if (dl && load_line(m, dl, depth + 1, err) < 0)
			return -1;
		p += l;
	}
	return finit_module_path(m, line, (size_t)(colon - line), err);
}

/*
 * Without MSB_MODULES, a default module is loaded only for hardware that is
 * there, as udev would: virtio_pci when the machine has a PCI bus, a
 * driver when a virtio device of its type is present (the transports come
 * first in default_modules, so their devices are listed by then).  Each
 * module loaded under TCG costs about 20 ms of boot.
 */
static const struct {
	const char *module;
	unsigned device;  /* virtio device id (virtio spec 5) */
} virtio_drivers[] = {
	{ "virtio_net", 1 }, { "virtio_blk", 2 }, { "virtio_console", 3 },
	{ "virtio_rng", 4 }, { "fuse", 26 }, { "virtiofs", 26 },
};

static bool dir_has_entries(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	bool any = false;

	while (d && !any && (e = readdir(d)))
		any = e->d_name[0] != '.';
	if (d)
		closedir(d);
	return any;
}

static bool virtio_device_present(unsigned id)
{
	DIR *d = opendir("/sys/bus/virtio/devices");
	struct dirent *e;
	bool found = false;

	while (d && !found && (e = readdir(d))) {
		char path[300], *text;
		unsigned v = 0;
		size_t len;

		if (e->d_name[0] == '.')
			continue;
		fmt(path, sizeof(path), "/sys/bus/virtio/devices/%s/device", e->d_name);
		text = read_file(path, 64, &len);
		if (!text)
			continue;
		/* "0x0003\n" */
		for (char *c = text + 2; len > 2 && cfg_hex_digit(*c) >= 0; c++)
			v = v * 16 + (unsigned)cfg_hex_digit(*c);
		found = v == id;
		free(text);
	}
	if (d)
		closedir(d);
	return found;
}

static bool module_wanted(const char *name)
{
	if (!strcmp(name, "virtio_pci"))
		return dir_has_entries("/sys/bus/pci/devices");
	for (size_t i = 0; i < sizeof(virtio_drivers) / sizeof(virtio_drivers[0]); i++)
		if (!strcmp(name, virtio_drivers[i].module))
			return virtio_device_present(virtio_drivers[i].device);
	return true;
}

/* The fstype of MSB_BLOCK_ROOT, when given: its driver may be a module too. */
static void block_root_fstype(char *out, size_t n)
{
	struct cfg_block_root br;
	const char *v = env("MSB_BLOCK_ROOT");
	struct cfg_err err;

	out[0] = '\0';
	if (v && cfg_parse_block_root(v, &br, &err) == 0 && br.fstype)
		fmt(out, n, ",%s", br.fstype);
}

/* A named module missing from modules.dep is built in or absent: not an error. */
static void load_modules(void)
{
	struct modules m = { .nloaded = 0 };
	const char *list = env("MSB_MODULES");
	char names[1024], fstype[64], *p = names;
	struct utsname u;
	struct cfg_err err;
	size_t len;

	if (uname(&u) < 0)
		return;
	fmt(m.dir, sizeof(m.dir), "/lib/modules/%s", u.release);
	if (access(m.dir, F_OK) < 0) {
		if (list)
			agent_log("MSB_MODULES: %s: %s", m.dir, strerror(errno));
		return;
	}
	fmt(names, sizeof(names), "%s/modules.dep", m.dir);
	m.dep = read_file(names, FILE_MAX, &len);
	if (!m.dep) {
		agent_log("modules: %s: %s", names, strerror(errno));
		return;
	}
	m.cmdline = read_file("/proc/cmdline", 65536, &len);
	m.trace = m.cmdline && cfg_cmdline_has(m.cmdline, "agentd.trace=1");
	block_root_fstype(fstype, sizeof(fstype));
	fmt(names, sizeof(names), "%s%s", list ? list : default_modules, fstype);
	while (p) {
		char *name = p, *comma = strchr(p, ',');
		char *line;

		p = comma ? comma + 1 : NULL;
		if (comma)
			*comma = '\0';
		if (!list && !module_wanted(name))
			continue;
		line = *name ? dep_line(&m, name, strlen(name), false) : NULL;
		if (!line) {
			if (list && *name)
				agent_log("module %s: not in modules.dep (built in?)", name);
			continue;
		}
		if (load_line(&m, line, 0, &err) < 0)
			agent_log("%s", err.msg);
	}
	free(m.dep);
	free(m.cmdline);
}

/* ---- 10.2 runtime share ---- */

static bool runtime_disabled(void)
{
	const char *v = env("MSB_RUNTIME");
	size_t len;
	char *cmdline = read_file("/proc/cmdline", 65536, &len);
	bool none = v && strcmp(v, "none") == 0;

	if (cmdline)
		none |= cfg_cmdline_has(cmdline, "agentd.runtime=none");
	free(cmdline);
	return none;
}

static int mount_runtime(const struct agent *a, struct cfg_err *err)
{
	if (runtime_disabled()) {
		agent_log("runtime share disabled (agentd.runtime=none)");
		return 0;
	}
	if (mkdir(a->runtime_dir, 0755) < 0 && errno != EEXIST)
		return cfg_fail(err, "mkdir %s: %s", a->runtime_dir, strerror(errno));
	if (mount("msb_runtime", a->runtime_dir, "virtiofs", 0, NULL) < 0 && errno != EBUSY)
		return cfg_fail(err, "mount virtiofs msb_runtime on %s: %s (no virtiofs driver or "
			    "no share? boot with agentd.runtime=none to run without one)",
			    a->runtime_dir, strerror(errno));
	return 0;
}

/* ---- 10.3 block-device root ---- */

/* Try each block filesystem type of /proc/filesystems. */
static int mount_probe(const char *dev, struct cfg_err *err)
{
	size_t len;
	char *fs = read_file("/proc/filesystems", 65536, &len), *line, *next;
	int ret = -1;

	if (!fs)
		return cfg_fail(err, "read /proc/filesystems: %s", strerror(errno));
	for (line = fs; line && *line && ret < 0; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (strncmp(line, "nodev", 5) == 0)
			continue;
		line += strspn(line, " \t");
		line[strcspn(line, " \t")] = '\0';
		if (*line && mount(dev, "/newroot", line, 0, NULL) == 0)
			ret = 0;
	}
	free(fs);
	return ret < 0 ? cfg_fail(err, "MSB_BLOCK_ROOT: no filesystem type mounts %s", dev) : 0;
}

/* Bind the runtime share on target, which must be a directory and not a
 * symlink (the image's /.msb -> /dev or -> a volume would expose the share
 * there): the mount goes on the directory opened without following. */
static int bind_runtime(const char *src, const char *target)
{
	int fd = open(target, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	char at[32];
	int r;

	if (fd < 0)
		return -1;
	fmt(at, sizeof(at), "/proc/self/fd/%d", fd);
	r = mount(src, at, NULL, MS_BIND, NULL);
	close(fd);
	return r;
}

static int switch_root(const struct agent *a, const char *value, struct cfg_err *err)
{
	struct cfg_block_root br;
	char inner[PATH_MAX];

	if (cfg_parse_block_root(value, &br, err) < 0)
		return -1;
	if (mkdir("/newroot", 0755) < 0 && errno != EEXIST)
		return cfg_fail(err, "mkdir /newroot: %s", strerror(errno));
	if (br.fstype && mount(br.device, "/newroot", br.fstype, 0, NULL) < 0)
		return cfg_fail(err, "mount %s (%s) on /newroot: %s", br.device, br.fstype,
			    strerror(errno));
	if (!br.fstype && mount_probe(br.device, err) < 0)
		return -1;
	fmt(inner, sizeof(inner), "/newroot%s", a->runtime_dir);
	if (mkdir(inner, 0755) < 0 && errno != EEXIST)
		return cfg_fail(err, "mkdir %s: %s", inner, strerror(errno));
	if (bind_runtime(a->runtime_dir, inner) < 0)
		return cfg_fail(err, "bind %s on %s: %s", a->runtime_dir, inner, strerror(errno));
	if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 ||
	    chroot(".") < 0 || chdir("/") < 0)
		return cfg_fail(err, "switch root to %s: %s", br.device, strerror(errno));
	return mount_essential(err);
}

/* ---- 10.4 volumes ---- */

static int mount_volumes(const char *value, struct cfg_err *err)
{
	struct cfg_mounts m;

	if (cfg_parse_mounts(value, &m, err) < 0)
		return -1;
	for (unsigned i = 0; i < m.n; i++) {
		unsigned long flags = MS_NOSUID | MS_NODEV | MS_RELATIME;

		if (m.m[i].ro)
			flags |= MS_RDONLY;
		if (mkdir_p(m.m[i].path, 0755) < 0)
			return cfg_fail(err, "MSB_MOUNTS: mkdir %s: %s", m.m[i].path, strerror(errno));
		if (mount(m.m[i].tag, m.m[i].path, "virtiofs", flags, NULL) < 0)
			return cfg_fail(err, "MSB_MOUNTS: mount virtiofs %s on %s: %s", m.m[i].tag,
				    m.m[i].path, strerror(errno));
	}
	return 0;
}

/* ---- 10.5 hostname ---- */

static int set_hostname(const char *name, struct cfg_err *err)
{
	char buf[1024];
	int n;

	if (name && cfg_check_hostname(name, err) < 0)
		return -1;  /* before any file is touched */
	n = cfg_hosts(name, buf, sizeof(buf));
	if (n < 0)
		return cfg_fail(err, "MSB_HOSTNAME: too long");
	if (mkdir_p("/etc", 0755) < 0 || write_file("/etc/hosts", buf, (size_t)n, O_TRUNC) < 0)
		return cfg_fail(err, "write /etc/hosts: %s", strerror(errno));
	if (!name)
		return 0;
	if (sethostname(name, strlen(name)) < 0)
		return cfg_fail(err, "MSB_HOSTNAME: sethostname '%.64s': %s", name, strerror(errno));
	n = fmt(buf, sizeof(buf), "%s\n", name);
	if (write_file("/etc/hostname", buf, (size_t)n, O_TRUNC) < 0)
		return cfg_fail(err, "write /etc/hostname: %s", strerror(errno));
	return 0;
}

/* ---- 10.6 tmpfs and 10.7 temporary directories ---- */

static int mount_tmpfs(const char *value, struct cfg_err *err)
{
	struct cfg_tmpfs_list t;
	char data[64];

	if (cfg_parse_tmpfs(value, &t, err) < 0)
		return -1;
	for (unsigned i = 0; i < t.n; i++) {
		const struct cfg_tmpfs *e = &t.e[i];
		unsigned long flags = MS_NOSUID | MS_NODEV | MS_RELATIME;

		if (e->noexec)
			flags |= MS_NOEXEC;
		cfg_tmpfs_data(e, data, sizeof(data));
		if (mkdir_p(e->path, 0755) < 0)
			return cfg_fail(err, "MSB_TMPFS: mkdir %s: %s", e->path, strerror(errno));
		if (mount("tmpfs", e->path, "tmpfs", flags, data) < 0)
			return cfg_fail(err, "MSB_TMPFS: mount tmpfs on %s (%s): %s", e->path, data,
				    strerror(errno));
	}
	return 0;
}

static int temp_dirs(struct cfg_err *err)
{
	static const char *const dirs[] = { "/tmp", "/var/tmp" };
	struct stat st;

	for (int i = 0; i < 2; i++) {
		if (mkdir_p(dirs[i], 01777) < 0 || stat(dirs[i], &st) < 0)
			return cfg_fail(err, "%s: %s", dirs[i], strerror(errno));
		if (!S_ISDIR(st.st_mode))
			return cfg_fail(err, "%s: not a directory", dirs[i]);
		if ((st.st_mode & 07777) != 01777 && chmod(dirs[i], 01777) < 0)
			return cfg_fail(err, "chmod %s: %s", dirs[i], strerror(errno));
	}
	return 0;
}

/* ---- 10.8 network ---- */

static int if_up(int fd, const char *name)
{
	struct ifreq ifr = { 0 };

	fmt(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
		return -1;
	ifr.ifr_flags |= IFF_UP;
	return ioctl(fd, SIOCSIFFLAGS, &ifr);
}

static int if_index(int fd, const char *name)
{
	struct ifreq ifr = { 0 };

	fmt(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	return ioctl(fd, SIOCGIFINDEX, &ifr) < 0 ? -1 : ifr.ifr_ifindex;
}

/*
 * The kernel assigns 127.0.0.1/8 and ::1/128 itself when lo comes up, so
 * the netlink requests in loopback() are only a fallback for an address
 * that is missing.  Neither check takes the rtnl lock: right after lo
 * comes up the kernel's own work holds it, and a request (even one that
 * ends in EEXIST) waits for it, about 10 ms of boot under TCG.
 *
 * fd is network()'s unbound UDP socket: bind succeeds only to an address
 * the machine has, and the socket still serves the interface ioctls.
 */
static bool lo_needs_v4(int fd)
{
	struct sockaddr_in sin = { .sin_family = AF_INET,
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	return bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0;
}

/* Without /proc/net/if_inet6 the kernel has no IPv6: nothing to add. */
static bool lo_needs_v6(void)
{
	size_t len;
	char *list = read_file("/proc/net/if_inet6", 65536, &len);
	bool needs = list ? !memmem(list, len, "00000000000000000000000000000001 ", 33)
			  : errno != ENOENT;

	free(list);
	return needs;
}

static int loopback(int fd, struct cfg_err *err)
{
	static const uint8_t v4[4] = { 127, 0, 0, 1 }, v6[16] = { [15] = 1 };
	int idx = if_index(fd, "lo"), r, k = 0;
	bool add4, add6;
	struct nl_batch b;

	if (idx < 0 || if_up(fd, "lo") < 0)
		return cfg_fail(err, "loopback: %s", strerror(errno));
	add4 = lo_needs_v4(fd);
	add6 = lo_needs_v6();
	nl_batch_init(&b);
	if (add4)
		nl_batch_addr(&b, idx, AF_INET, v4, 8);
	if (add6)
		nl_batch_addr(&b, idx, AF_INET6, v6, 128);
	if ((r = nl_batch_send(&b)) < 0)
		return cfg_fail(err, "loopback addresses: %s", strerror(-r));
	r = add4 ? b.result[k++] : 0;
	if (r < 0 && r != -EEXIST)
		return cfg_fail(err, "loopback 127.0.0.1/8: %s", strerror(-r));
	r = add6 ? b.result[k] : 0;
	/* A kernel without IPv6 has no ::1 to add. */
	if (r < 0 && r != -EEXIST && r != -EAFNOSUPPORT)
		return cfg_fail(err, "loopback ::1/128: %s", strerror(-r));
	return 0;
}

struct net_cfg {
	struct cfg_net net;
	struct cfg_ip v4, v6;
	bool has_v4, has_v6;
};

static int net_parse(const char *net, struct net_cfg *c, struct cfg_err *err)
{
	const char *v4 = env("MSB_NET_IPV4"), *v6 = env("MSB_NET_IPV6");

	if (cfg_parse_net(net, &c->net, err) < 0)
		return -1;
	c->has_v4 = v4 != NULL;
	c->has_v6 = v6 != NULL;
	if (v4 && cfg_parse_ip(v4, AF_INET, &c->v4, err) < 0)
		return -1;
	if (v6 && cfg_parse_ip(v6, AF_INET6, &c->v6, err) < 0)
		return -1;
	return 0;
}

static int net_link(int fd, const struct cfg_net *n, int *idx, struct cfg_err *err)
{
	struct ifreq ifr = { 0 };

	*idx = if_index(fd, n->iface);
	if (*idx < 0)
		return cfg_fail(err, "MSB_NET: interface %s: %s", n->iface, strerror(errno));
	fmt(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", n->iface);
	ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
	memcpy(ifr.ifr_hwaddr.sa_data, n->mac, 6);
	if (ioctl(fd, SIOCSIFHWADDR, &ifr) < 0)
		return cfg_fail(err, "MSB_NET: set mac of %s: %s", n->iface, strerror(errno));
	ifr.ifr_mtu = n->mtu;
	if (ioctl(fd, SIOCSIFMTU, &ifr) < 0)
		return cfg_fail(err, "MSB_NET: set mtu %u of %s: %s", n->mtu, n->iface,
			    strerror(errno));
	return 0;
}

/* Both families' addresses (or default routes) in one netlink batch. */
static int net_addrs(int idx, const struct net_cfg *c, bool route, struct cfg_err *err)
{
	const struct cfg_ip *ips[2] = { c->has_v4 ? &c->v4 : NULL, c->has_v6 ? &c->v6 : NULL };
	const char *what = route ? "default route" : "address";
	struct nl_batch b;
	unsigned k = 0;
	int r;

	nl_batch_init(&b);
	for (int i = 0; i < 2; i++) {
		if (ips[i] && route)
			nl_batch_route(&b, ips[i]->family, ips[i]->gw);
		else if (ips[i])
			nl_batch_addr(&b, idx, ips[i]->family, ips[i]->addr, ips[i]->prefix);
	}
	if ((r = nl_batch_send(&b)) < 0)
		return cfg_fail(err, "MSB_NET: add %s: %s", what, strerror(-r));
	for (int i = 0; i < 2; i++) {
		if (ips[i] && (r = b.result[k++]) < 0)
			return cfg_fail(err, "%s: add %s: %s", i ? "MSB_NET_IPV6" : "MSB_NET_IPV4",
				    what, strerror(-r));
	}
	return 0;
}

static int net_apply(int fd, const struct net_cfg *c, struct cfg_err *err)
{
	char buf[256];
	int idx, n;

	if (net_link(fd, &c->net, &idx, err) < 0 || net_addrs(idx, c, false, err) < 0)
		return -1;
	if (if_up(fd, c->net.iface) < 0)
		return cfg_fail(err, "MSB_NET: bring up %s: %s", c->net.iface, strerror(errno));
	if (net_addrs(idx, c, true, err) < 0)
		return -1;
	n = cfg_resolv(c->has_v4 ? &c->v4 : NULL, c->has_v6 ? &c->v6 : NULL, buf, sizeof(buf));
	if (n > 0 && (mkdir_p("/etc", 0755) < 0 ||
		      write_file("/etc/resolv.conf", buf, (size_t)n, O_TRUNC) < 0))
		return cfg_fail(err, "write /etc/resolv.conf: %s", strerror(errno));
	return 0;
}

static int network(struct agent *a, struct cfg_err *err)
{
	struct net_cfg c;
	const char *net = env("MSB_NET");
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), r;

	if (fd < 0)
		return cfg_fail(err, "network socket: %s", strerror(errno));
	r = loopback(fd, err);
	init_trace(a, "loopback");
	if (r == 0 && net) {
		r = net_parse(net, &c, err);
		if (r == 0)
			r = net_apply(fd, &c, err);
	}
	close(fd);
	return r;
}

/* ---- 10.9 TLS interception CA ---- */

static const char *const ca_dirs[] = {
	"/usr/local/share/ca-certificates", "/etc/pki/ca-trust/source/anchors",
};
static const char *const ca_bundles[] = {
	"/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
	"/etc/ssl/cert.pem",
};

/* A distribution's bundle may be a symlink (Fedora's ca-bundle.crt): never
 * write through it (an image could aim it into a volume); put a regular
 * file with the same content in its place. */
static int bundle_unlink_symlink(const char *path, const char *cur, size_t len)
{
	struct stat st;

	if (lstat(path, &st) < 0 || !S_ISLNK(st.st_mode))
		return 0;
	if (unlink(path) < 0)
		return -1;
	return write_file(path, cur, len, O_EXCL);
}

/* Append pem to the first bundle that exists (unless it already ends with
 * it), else create one. */
static int ca_bundle(const char *pem, size_t n, const char **used, struct cfg_err *err)
{
	for (size_t i = 0; i < 3; i++) {
		size_t len;
		char *cur = read_file(ca_bundles[i], FILE_MAX, &len);
		int r = 0;

		if (!cur && errno == ENOENT)
			continue;
		if (!cur)
			return cfg_fail(err, "read %s: %s", ca_bundles[i], strerror(errno));
		*used = ca_bundles[i];
		/* Appended on an earlier boot (a persistent root): it is still
		 * the bundle's tail.  Not a search: pem and bundle are both
		 * megabytes at worst. */
		if (len < n || memcmp(cur + len - n, pem, n)) {
			r = bundle_unlink_symlink(ca_bundles[i], cur, len);
			if (r == 0 && len && cur[len - 1] != '\n')
				r = write_file(ca_bundles[i], "\n", 1, O_APPEND);
			if (r == 0)
				r = write_file(ca_bundles[i], pem, n, O_APPEND);
		}
		free(cur);
		return r < 0 ? cfg_fail(err, "append CA to %s: %s", *used, strerror(errno)) : 0;
	}
	*used = ca_bundles[0];
	if (mkdir_p("/etc/ssl/certs", 0755) < 0 || write_file(*used, pem, n, O_TRUNC) < 0)
		return cfg_fail(err, "write %s: %s", *used, strerror(errno));
	return 0;
}

/* name=value in the agent's environment, for every later child.  Not
 * setenv, which brings 1 KB of libc: this runs once at boot, so the
 * strings and the new array are simply kept. */
static int env_export(const char *name, const char *value)
{
	extern char **environ;
	size_t nl = strlen(name), n = nl + strlen(value) + 2, i;
	char *s = malloc(n), **env;

	for (i = 0; environ[i]; i++)
		if (strncmp(environ[i], name, nl) == 0 && environ[i][nl] == '=')
			break;
	env = environ[i] ? environ : malloc((i + 2) * sizeof(*env));
	if (!s || !env) {
		free(s);
		return -1;
	}
	if (env != environ) {
		memcpy(env, environ, i * sizeof(*env));
		env[i + 1] = NULL;
		environ = env;
	}
	fmt(s, n, "%s=%s", name, value);
	env[i] = s;
	return 0;
}

static int install_ca(const struct agent *a, struct cfg_err *err)
{
	char path[PATH_MAX], copy[PATH_MAX];
	const char *bundle = NULL;
	struct stat st;
	size_t n;
	char *pem;
	int r;

	fmt(path, sizeof(path), "%s/tls/ca.pem", a->runtime_dir);
	if (stat(path, &st) < 0)
		return 0;
	pem = read_file(path, FILE_MAX, &n);
	if (!pem)
		return cfg_fail(err, "read %s: %s", path, strerror(errno));
	for (size_t i = 0; i < 2; i++) {
		if (stat(ca_dirs[i], &st) < 0 || !S_ISDIR(st.st_mode))
			continue;
		fmt(copy, sizeof(copy), "%s/microsandbox-ca.pem", ca_dirs[i]);
		if (write_file(copy, pem, n, O_TRUNC) < 0)
			agent_log("write %s: %s", copy, strerror(errno));
	}
	r = ca_bundle(pem, n, &bundle, err);
	free(pem);
	if (r < 0)
		return -1;
	if (env_export("SSL_CERT_FILE", bundle) | env_export("REQUESTS_CA_BUNDLE", bundle) |
	    env_export("CURL_CA_BUNDLE", bundle) | env_export("NODE_EXTRA_CA_CERTS", path))
		agent_log("export the CA bundle's path: out of memory");
	return 0;
}

/* ---- 10.10 /etc/profile and 10.11 /run ---- */

static int profile_block(struct cfg_err *err)
{
	char add[CFG_PROFILE_ADD_MAX];
	size_t len = 0, n;
	char *cur = read_file("/etc/profile", FILE_MAX, &len);

	if (!cur && errno != ENOENT)
		return cfg_fail(err, "read /etc/profile: %s", strerror(errno));
	n = cfg_profile_append(cur ? cur : "", cur ? len : 0, add);
	free(cur);
	if (n && (mkdir_p("/etc", 0755) < 0 || write_file("/etc/profile", add, n, O_APPEND) < 0))
		return cfg_fail(err, "write /etc/profile: %s", strerror(errno));
	return 0;
}

static int make_run(struct cfg_err *err)
{
	if (mkdir("/run", 0755) < 0 && errno != EEXIST)
		return cfg_fail(err, "mkdir /run: %s", strerror(errno));
	return 0;
}

/* ---- agentd.trace=1: the duration of each boot step ---- */

/*
 * With agentd.trace=1 on the kernel command line each step of the boot
 * prints "boot step NAME: N us, at T us" on the console (T counts from the
 * agent's start), so bench/ and a slow boot's console show where the time
 * to ready goes.  A step's duration leaves out the printing of the line
 * before it (the "boot module" lines are printed within the module step).
 */
void init_trace(struct agent *a, const char *step)
{
	uint64_t now;

	if (!a->trace_ns)
		return;
	now = agent_clock_ns(CLOCK_BOOTTIME);
	agent_log("boot step %s: %llu us, at %llu us", step,
		  (unsigned long long)(now - a->trace_ns) / 1000,
		  (unsigned long long)(now - a->boot_time_ns) / 1000);
	a->trace_ns = agent_clock_ns(CLOCK_BOOTTIME);
}

/* The step's own result, passed through once it is traced. */
static int traced(struct agent *a, const char *step, int r)
{
	init_trace(a, step);
	return r;
}

/* /proc must be mounted: the switch is read from /proc/cmdline. */
static void trace_start(struct agent *a)
{
	size_t len;
	char *cmdline = read_file("/proc/cmdline", 65536, &len);

	if (cmdline && cfg_cmdline_has(cmdline, "agentd.trace=1"))
		a->trace_ns = a->boot_time_ns;
	free(cmdline);
}

/* ---- the sequence ---- */

static int init_steps(struct agent *a, struct cfg_err *err)
{
	const char *v;

	if (mount_essential(err) < 0)
		return -1;
	ensure_console_fds();
	protect_from_oom();
	trace_start(a);
	init_trace(a, "mounts");
	load_modules();
	init_trace(a, "modules");
	if (traced(a, "runtime", mount_runtime(a, err)) < 0)
		return -1;
	if ((v = env("MSB_BLOCK_ROOT")) && traced(a, "block_root", switch_root(a, v, err)) < 0)
		return -1;
	if ((v = env("MSB_MOUNTS")) && traced(a, "volumes", mount_volumes(v, err)) < 0)
		return -1;
	if (traced(a, "hostname", set_hostname(env("MSB_HOSTNAME"), err)) < 0)
		return -1;
	if ((v = env("MSB_TMPFS")) && traced(a, "tmpfs", mount_tmpfs(v, err)) < 0)
		return -1;
	if (traced(a, "tmp", temp_dirs(err)) < 0 || traced(a, "network", network(a, err)) < 0 ||
	    traced(a, "ca", install_ca(a, err)) < 0 || traced(a, "profile", profile_block(err)) < 0 ||
	    traced(a, "run", make_run(err)) < 0)
		return -1;
	return 0;
}

int init_run(struct agent *a)
{
	struct cfg_err err = { "" };

	/* SPEC 10.12: cwd / and the kernel's default umask for init. */
	umask(022);
	if (chdir("/") < 0 || init_steps(a, &err) == 0)
		return 0;
	agent_log("init failed: %s; powering off", err.msg);
	init_power_off();
}

/* ---- shutdown: filesystems, where a hang cannot stop the power-off ---- */

#define SYNC_DEADLINE_MS     3000
#define UNMOUNT_DEADLINE_MS  5000

static bool fs_is_virtual(const char *type)
{
	static const char *const virt[] = { "proc", "sysfs", "devtmpfs",
		"devpts", "tmpfs", "cgroup", "cgroup2", "mqueue", "debugfs",
		"securityfs", "pstore", "bpf", "tracefs", "hugetlbfs",
		"configfs", "fusectl", "ramfs", "rootfs", "binfmt_misc", NULL };
	int i;

	for (i = 0; virt[i]; i++)
		if (!strcmp(type, virt[i]))
			return true;
	return false;
}

/* /proc/self/mounts writes space, tab, newline and backslash as \ooo. */
static void unescape_octal(char *s)
{
	char *d = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' &&
		    s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
			*d++ = (char)((s[1] - '0') << 6 | (s[2] - '0') << 3 |
				      (s[3] - '0'));
			s += 3;
		} else {
			*d++ = *s;
		}
	}
	*d = '\0';
}

/* Unmount or remount read-only every real filesystem, last mounted first. */
static void unmount_all(void)
{
	size_t len = 0, n = 0, i;
	char *buf = read_file("/proc/self/mounts", FILE_MAX, &len);
	char **dirs = buf ? calloc(len / 4 + 1, sizeof(*dirs)) : NULL;
	char *line, *next;

	for (line = buf; dirs && line && *line; line = next) {
		char *dev, *dir, *type;

		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		dev = strsep(&line, " ");
		dir = strsep(&line, " ");
		type = strsep(&line, " ");
		if (!dev || !dir || !type || fs_is_virtual(type))
			continue;
		unescape_octal(dir);
		if (strcmp(dir, "/"))
			dirs[n++] = dir;
	}
	sync();
	for (i = n; i-- > 0;)
		if (umount2(dirs[i], 0) < 0)
			mount(NULL, dirs[i], NULL, MS_REMOUNT | MS_RDONLY, NULL);
	mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
	sync();
}

/* fn in a child, waited for at most ms (fn inline if fork fails). */
static void run_with_deadline(void (*fn)(void), unsigned ms)
{
	struct timespec pause_ts = { 0, 10 * 1000000L };
	unsigned waited;
	int pid = _Fork();

	if (pid <= 0) {
		fn();
		if (pid == 0)
			_exit(0);
		return;
	}
	for (waited = 0; waited < ms; waited += 10) {
		if (waitpid(pid, NULL, WNOHANG) != 0)
			return;
		nanosleep(&pause_ts, NULL);
	}
	agent_log("filesystems still busy after %u ms; powering off anyway", ms);
	kill(pid, SIGKILL);
}

void init_unmount_all(void)
{
	run_with_deadline(unmount_all, UNMOUNT_DEADLINE_MS);
}

void init_power_off(void)
{
	/* Never power off the machine we were merely started on for a test. */
	if (getpid() != 1)
		_exit(1);
	run_with_deadline(sync, SYNC_DEADLINE_MS);
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}
