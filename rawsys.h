/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rawsys.h - system calls that never touch errno.
 *
 * An exec child shares the agent's memory (clone with CLONE_VM, no
 * CLONE_VFORK: the agent runs on meanwhile), and with it libc's errno and
 * thread data.  Everything such a child calls goes through these: they
 * return the result or -errno, and write nothing but the kernel's answer.
 */
#ifndef AGENTD_RAWSYS_H
#define AGENTD_RAWSYS_H

#include <signal.h>
#include <stdint.h>
#include <sys/syscall.h>

static inline long raw_syscall(long n, long a, long b, long c, long d, long e)
{
#if defined(__x86_64__)
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	long ret;

	__asm__ volatile ("syscall"
			  : "=a"(ret)
			  : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
			  : "rcx", "r11", "memory");
	return ret;
#elif defined(__aarch64__)
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	register long x3 __asm__("x3") = d;
	register long x4 __asm__("x4") = e;

	__asm__ volatile ("svc 0"
			  : "+r"(x0)
			  : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4)
			  : "memory", "cc");
	return x0;
#else
#error "rawsys.h: add this architecture's system call sequence"
#endif
}

static inline long raw1(long n, long a)
{
	return raw_syscall(n, a, 0, 0, 0, 0);
}

static inline long raw2(long n, long a, long b)
{
	return raw_syscall(n, a, b, 0, 0, 0);
}

static inline long raw3(long n, long a, long b, long c)
{
	return raw_syscall(n, a, b, c, 0, 0);
}

static inline long raw4(long n, long a, long b, long c, long d)
{
	return raw_syscall(n, a, b, c, d, 0);
}

/* The kernel's struct sigaction (x86-64, arm64 layout). */
struct kernel_sigaction {
	void (*handler)(int);
	unsigned long flags;
	void (*restorer)(void);
	uint64_t mask;
};

/* SIG_DFL or SIG_IGN: these need no restorer, so no libc sigaction (and
 * its handler machinery) in the agent.  0 or -errno. */
static inline long raw_signal(int sig, void (*handler)(int))
{
	struct kernel_sigaction sa = { .handler = handler };

	return raw4(SYS_rt_sigaction, sig, (long)&sa, 0, sizeof(uint64_t));
}

#endif
