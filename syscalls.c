/* SPDX-License-Identifier: Apache-2.0 */
/*
 * syscalls.c - libc functions as the plain system call, linked into agentd
 * in place of musl's, which carry what the agent never needs (about 3 KB
 * in all): a vDSO lookup for clock_gettime, fallbacks for kernels before
 * 2.6.27 (no SOCK_CLOEXEC, pipe2, signalfd4, epoll_create1,
 * F_DUPFD_CLOEXEC), a copy of struct stat from the kernel's layout where
 * it is the same, the /proc/self/fd fallback of fchmod and fchown for
 * O_PATH descriptors (the agent never passes one), a libc lock around fork
 * for threads the agent does not have, and a lock per directory stream
 * (with musl's lock code).  The agent reads the clock a few
 * times per
 * frame, next to the read and write calls that move it, so a system call
 * there costs nothing a round trip shows.  Only agentd links this file
 * (agentd-san keeps the sanitizer's libc).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_gettime(clockid_t id, struct timespec *ts)
{
	return (int)syscall(SYS_clock_gettime, id, ts);
}

int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	unsigned long arg;

	va_start(ap, cmd);
	arg = va_arg(ap, unsigned long);
	va_end(ap);
	return (int)syscall(SYS_fcntl, fd, cmd, arg);
}

int pipe2(int fd[2], int flags)
{
	return (int)syscall(SYS_pipe2, fd, flags);
}

int socket(int domain, int type, int protocol)
{
	return (int)syscall(SYS_socket, domain, type, protocol);
}

int socketpair(int domain, int type, int protocol, int fd[2])
{
	return (int)syscall(SYS_socketpair, domain, type, protocol, fd);
}

int epoll_create1(int flags)
{
	return (int)syscall(SYS_epoll_create1, flags);
}

int epoll_ctl(int fd, int op, int fd2, struct epoll_event *ev)
{
	return (int)syscall(SYS_epoll_ctl, fd, op, fd2, ev);
}

int epoll_wait(int fd, struct epoll_event *ev, int cnt, int to)
{
	return (int)syscall(SYS_epoll_pwait, fd, ev, cnt, to, 0, _NSIG / 8);
}

int signalfd(int fd, const sigset_t *mask, int flags)
{
	return (int)syscall(SYS_signalfd4, fd, mask, _NSIG / 8, flags);
}

/* The kernel's struct stat is libc's on x86-64 and arm64, so no copy
 * (musl's stat, lstat and fstat call this). */
#if defined(__x86_64__)
_Static_assert(sizeof(struct stat) == 144, "struct stat is the kernel's");
#elif defined(__aarch64__)
_Static_assert(sizeof(struct stat) == 128, "struct stat is the kernel's");
#else
#error "syscalls.c: check this architecture's struct stat against the kernel's"
#endif

int fstatat(int fd, const char *path, struct stat *st, int flags)
{
	return (int)syscall(SYS_newfstatat, fd, path, st, flags);
}

int open(const char *path, int flags, ...)
{
	va_list ap;
	unsigned mode;

	va_start(ap, flags);
	mode = va_arg(ap, unsigned);
	va_end(ap);
	return openat(AT_FDCWD, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	unsigned mode;

	va_start(ap, flags);
	mode = va_arg(ap, unsigned);
	va_end(ap);
	return (int)syscall(SYS_openat, dirfd, path, flags, mode);
}

int fchmod(int fd, mode_t mode)
{
	return (int)syscall(SYS_fchmod, fd, mode);
}

int fchown(int fd, uid_t uid, gid_t gid)
{
	return (int)syscall(SYS_fchown, fd, uid, gid);
}

int ioctl(int fd, int req, ...)
{
	va_list ap;
	unsigned long arg;

	va_start(ap, req);
	arg = va_arg(ap, unsigned long);
	va_end(ap);
	return (int)syscall(SYS_ioctl, fd, req, arg);
}

int prctl(int op, ...)
{
	va_list ap;
	unsigned long x[4];
	int i;

	va_start(ap, op);
	for (i = 0; i < 4; i++)
		x[i] = va_arg(ap, unsigned long);
	va_end(ap);
	return (int)syscall(SYS_prctl, op, x[0], x[1], x[2], x[3]);
}

int nanosleep(const struct timespec *req, struct timespec *rem)
{
	return (int)syscall(SYS_nanosleep, req, rem);
}

/* The agent has no threads, so the child of a fork has no thread list or
 * lock to reset; SIGCHLD as the exit signal is what fork() means.  The
 * child keeps the parent's tid in musl's thread descriptor, which raise,
 * abort and pthread_kill would signal: the Makefile's AGENT_GUARD makes
 * the link fail if anything calls them. */
pid_t _Fork(void)
{
	return (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
}

/* struct msghdr and struct cmsghdr carry padding where the kernel's have
 * size_t lengths: it must be zero, or the kernel reads a huge length (a
 * caller's stack garbage there once made fd passing fail with EPIPE).
 * The agent's control buffers are its own, writable, so the padding is
 * cleared in place rather than in a copy. */
ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	struct msghdr h = *msg;
	struct cmsghdr *c;

	h.__pad1 = h.__pad2 = 0;
	for (c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(&h, c))
		c->__pad1 = 0;
	return syscall(SYS_sendmsg, fd, &h, flags);
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	msg->__pad1 = msg->__pad2 = 0;
	return syscall(SYS_recvmsg, fd, msg, flags);
}

/* Directory streams.  Every caller opens with O_DIRECTORY (so there is
 * nothing left for fdopendir to check) and O_CLOEXEC (nothing to set), and
 * uses a stream from the one thread there is.  The buffer holds a
 * getdents64 batch (struct dirent is the kernel's struct linux_dirent64 on
 * musl); 2016 bytes, so that a stream and its allocator header fill 2 KiB
 * exactly, and still above the largest entry (1048 bytes, FUSE's names).
 * musl's telldir, seekdir, scandir and readdir_r would read this struct
 * as musl's: AGENT_GUARD in the Makefile keeps them out. */
struct __dirstream {
	int fd, pos, end;
	char buf[2016] __attribute__((aligned(8)));
};

DIR *fdopendir(int fd)
{
	DIR *d = calloc(1, sizeof(*d));

	if (d)
		d->fd = fd;
	return d;
}

DIR *opendir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d;

	if (fd < 0)
		return NULL;
	d = fdopendir(fd);
	if (!d)
		close(fd);
	return d;
}

int closedir(DIR *d)
{
	int r = close(d->fd);

	free(d);
	return r;
}

int dirfd(DIR *d)
{
	return d->fd;
}

void rewinddir(DIR *d)
{
	lseek(d->fd, 0, SEEK_SET);
	d->pos = d->end = 0;
}

/* NULL with errno unchanged at the end (or when the directory was
 * removed under the stream, ENOENT, as musl does); NULL with errno set
 * on an error. */
struct dirent *readdir(DIR *d)
{
	struct dirent *de;

	if (d->pos >= d->end) {
		int saved = errno;
		long n = syscall(SYS_getdents64, d->fd, d->buf, sizeof(d->buf));

		if (n <= 0) {
			if (n == 0 || errno == ENOENT)
				errno = saved;
			return NULL;
		}
		d->pos = 0;
		d->end = (int)n;
	}
	de = (struct dirent *)(void *)(d->buf + d->pos);
	d->pos += de->d_reclen;
	return de;
}
