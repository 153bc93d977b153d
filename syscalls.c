/* SPDX-License-Identifier: Apache-2.0 */
/*
 * syscalls.c - libc functions as the plain system call, linked into agentd
 * in place of musl's, which carry what the agent never needs (about 3 KB
 * in all): a vDSO lookup for clock_gettime, fallbacks for kernels before
 * 2.6.27 (no SOCK_CLOEXEC, pipe2, signalfd4, epoll_create1,
 * F_DUPFD_CLOEXEC), a copy of struct stat from the kernel's layout where
 * it is the same.  (Not sendmsg: musl's copies the control data to clear
 * the padding of struct cmsghdr, which the kernel reads as part of a
 * size_t cmsg_len; a caller's stack garbage there made fd passing fail
 * with EPIPE.)  The agent reads the clock a few times per
 * frame, next to the read and write calls that move it, so a system call
 * there costs nothing a round trip shows.  Only agentd links this file
 * (agentd-san keeps the sanitizer's libc).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <signal.h>
#include <sys/epoll.h>
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
