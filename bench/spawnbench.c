/* SPDX-License-Identifier: Apache-2.0 */
/*
 * spawnbench - what starting and reaping a program costs the guest kernel
 * itself, with no agent in between: the baseline under the agent's exec
 * round trip in bench/bench.py.  Built static by bench.py and put in the
 * bench initramfs as /bin/spawnbench.
 *
 *     spawnbench N CMD [ARGS...]
 *
 * Runs CMD N times with each of fork + execvp + waitpid, vfork + execvp +
 * waitpid and posix_spawnp + waitpid, and prints one line per method:
 *
 *     spawnbench fork n=100 median_us=812.4 mean_us=850.1
 *
 * CMD is looked up in PATH like the agent's exec does.  Exit status 1
 * when CMD could not run or did not exit 0.
 */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum method { M_FORK, M_VFORK, M_POSIX_SPAWN };

static const char *const method_names[] = { "fork", "vfork", "posix_spawn" };

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* One start of argv; the child's pid, or -1. */
static pid_t start(enum method m, char **argv)
{
	pid_t pid;

	switch (m) {
	case M_FORK:
		pid = fork();
		break;
	case M_VFORK:
		pid = vfork();
		break;
	default:
		return posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ) ? -1 : pid;
	}
	if (pid == 0) {
		execvp(argv[0], argv);
		_exit(127);
	}
	return pid;
}

/* Microseconds from start to reaped, or -1 when it did not exit 0. */
static double one_run(enum method m, char **argv)
{
	double t = now_us();
	pid_t pid = start(m, argv);
	int status;

	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return -1;
	return now_us() - t;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static int measure(enum method m, int n, char **argv, double *samples)
{
	double sum = 0, median;

	for (int i = 0; i < n; i++) {
		samples[i] = one_run(m, argv);
		if (samples[i] < 0) {
			fprintf(stderr, "spawnbench: %s of %s failed\n", method_names[m], argv[0]);
			return -1;
		}
		sum += samples[i];
	}
	qsort(samples, (size_t)n, sizeof(*samples), cmp_double);
	median = n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
	printf("spawnbench %s n=%d median_us=%.1f mean_us=%.1f\n", method_names[m], n,
	       median, sum / n);
	return 0;
}

int main(int argc, char **argv)
{
	int n = argc > 2 ? atoi(argv[1]) : 0;
	double *samples;

	if (n < 1 || n > 100000) {
		fprintf(stderr, "usage: spawnbench N CMD [ARGS...]\n");
		return 2;
	}
	samples = malloc((size_t)n * sizeof(*samples));
	if (!samples)
		return 1;
	for (int m = M_FORK; m <= M_POSIX_SPAWN; m++)
		if (measure((enum method)m, n, argv + 2, samples) < 0)
			return 1;
	return 0;
}
