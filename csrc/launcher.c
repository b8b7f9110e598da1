/*
 * nsgate launcher: the privilege boundary in front of one helper.
 *
 * Built once per helper with four compile-time constants:
 *   NSGATE_HELPER  the helper's name ("newuidmap", ...), passed to Python as a fixed string
 *   NSGATE_PYTHON  the absolute path of the system interpreter
 *   NSGATE_LIBDIR  the root-owned directory holding the nsgate package
 *   NSGATE_SOCKET  the socket of the nsgated service
 * Nothing is taken from argv[0] or the environment. This program decides nothing: it puts the
 * process into a known state, hands the request to nsgated if it runs (service_client.c), and
 * otherwise execs the interpreter in isolated mode. Every decision is Python's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include "service_client.h"

#define MAX_ARGS 4096
#define MIN_FILES 32
#define MIN_STACK (1 << 20)
#define MIN_MEMORY (256UL << 20)

static void die(const char *why)
{
	/* Fixed text only: fd 2 is known to be open when this is called. */
	static const char prefix[] = NSGATE_HELPER ": launcher: ";
	(void)!write(2, prefix, sizeof(prefix) - 1);
	(void)!write(2, why, strlen(why));
	(void)!write(2, "\n", 1);
	_exit(1);
}

static void open_standard_fds(void)
{
	for (int fd = 0; fd <= 2; fd++) {
		if (fcntl(fd, F_GETFD) != -1 || errno != EBADF)
			continue;
		if (open("/dev/null", O_RDWR | O_NOCTTY) != fd)
			_exit(1); /* fd 2 may be the one missing: nothing can be said */
	}
}

/* "fd:N" in canonical decimal, as the map helpers accept it; -1 when argv[1] is anything else. */
static int fd_argument(int argc, char **argv)
{
	const char *s = argc >= 2 ? argv[1] : "";
	long n = 0;

	if (strncmp(s, "fd:", 3) != 0 || s[3] == '\0' || (s[3] == '0' && s[4] != '\0'))
		return -1;
	for (s += 3; *s; s++) {
		if (*s < '0' || *s > '9' || n > INT_MAX / 10)
			return -1;
		n = n * 10 + (*s - '0');
	}
	return n <= INT_MAX && n > 2 ? (int)n : -1;
}

static void close_other_fds(int keep)
{
	unsigned int above = keep > 2 ? (unsigned int)keep + 1 : 3U;

	if (keep > 3 && syscall(SYS_close_range, 3U, (unsigned int)keep - 1, 0U) != 0)
		die("close_range failed: kernel too old?");
	if (syscall(SYS_close_range, above, ~0U, 0U) != 0)
		die("close_range failed: kernel too old?");
}

static void reset_signals(void)
{
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	sigset_t none;

	for (int sig = 1; sig < NSIG; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			sigaction(sig, &dfl, NULL); /* fails harmlessly for glibc-reserved numbers */
	/* The caller's terminal signals are ignored: a helper run is short and all-or-nothing,
	 * and one killed by the caller's Ctrl-C looks like success to util-linux's unshare. */
	static const int ignored[] = { SIGINT, SIGQUIT, SIGTSTP, SIGTTIN, SIGTTOU, SIGHUP };
	struct sigaction ign = { .sa_handler = SIG_IGN };
	for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++)
		sigaction(ignored[i], &ign, NULL);
	sigemptyset(&none);
	if (sigprocmask(SIG_SETMASK, &none, NULL) != 0)
		die("cannot reset the signal mask");
	struct itimerval off = { 0 };
	for (int which = ITIMER_REAL; which <= ITIMER_PROF; which++)
		if (setitimer(which, &off, NULL) != 0)
			die("cannot cancel interval timers");
}

/*
 * Set both limits to `value`. Without CAP_SYS_RESOURCE (file capabilities, or a container that
 * drops it from the bounding set) a hard limit the caller lowered cannot be raised: then the
 * soft limit goes as close as it can, and Python fails closed on whatever it cannot do (it
 * ignores SIGXFSZ and checks every write's length).
 */
static void set_limit(int resource, rlim_t value)
{
	struct rlimit lim = { value, value };

	if (setrlimit(resource, &lim) == 0)
		return;
	if (getrlimit(resource, &lim) != 0)
		die("getrlimit failed");
	lim.rlim_cur = lim.rlim_max < value ? lim.rlim_max : value;
	if (setrlimit(resource, &lim) != 0)
		die("cannot set a resource limit");
}

static void reset_process_state(void)
{
	struct rlimit lim;

	set_limit(RLIMIT_CORE, 0);
	set_limit(RLIMIT_FSIZE, RLIM_INFINITY);
	set_limit(RLIMIT_AS, RLIM_INFINITY);
	set_limit(RLIMIT_DATA, RLIM_INFINITY);
	set_limit(RLIMIT_STACK, 8 << 20);
	set_limit(RLIMIT_NOFILE, 1024);
	set_limit(RLIMIT_CPU, RLIM_INFINITY);
	if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur < MIN_FILES)
		die("RLIMIT_NOFILE is too low to run the helper: raise it");
	if (getrlimit(RLIMIT_STACK, &lim) != 0 || lim.rlim_cur < MIN_STACK)
		die("RLIMIT_STACK is too low to run the helper: raise it");
	if (getrlimit(RLIMIT_AS, &lim) != 0 || lim.rlim_cur < MIN_MEMORY)
		die("RLIMIT_AS is too low to run the helper: raise it");
	if (getrlimit(RLIMIT_DATA, &lim) != 0 || lim.rlim_cur < MIN_MEMORY)
		die("RLIMIT_DATA is too low to run the helper: raise it");
	/* Raising a niced priority needs privilege that a file-capabilities install lacks. */
	if (setpriority(PRIO_PROCESS, 0, 0) != 0 && geteuid() == 0)
		die("cannot reset the scheduling priority");
	umask(022);
	if (chdir("/") != 0)
		die("cannot chdir to /");
}

/*
 * With file capabilities instead of setuid root, the euid stays the caller's and capabilities
 * would be lost across execve of the interpreter: carry the permitted set over as ambient
 * capabilities. Python clears the ambient set first thing.
 */
static void carry_file_capabilities(void)
{
	struct __user_cap_header_struct head = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];

	if (geteuid() == 0)
		return;
	if (syscall(SYS_capget, &head, data) != 0)
		die("capget failed");
	data[0].inheritable = data[0].permitted;
	data[1].inheritable = data[1].permitted;
	if (syscall(SYS_capset, &head, data) != 0)
		die("capset failed");
	for (int cap = 0; cap < 64; cap++)
		if (data[cap / 32].permitted & (1U << (cap % 32)))
			if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0)
				die("cannot raise an ambient capability");
}

int main(int argc, char **argv)
{
	static char *const clean_env[] = {
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8", NULL
	};
	static const char code[] = "import sys;sys.path.insert(0,'" NSGATE_LIBDIR "');"
		"from nsgate.cli.entry import run;run('" NSGATE_HELPER "')";
	static char *args[MAX_ARGS + 8]; /* not on the stack: the caller sets its limit */
	int n = 0;

	open_standard_fds();
	if (argc < 1 || argv == NULL || argv[0] == NULL)
		die("refusing to run with an empty argument list");
	if (argc > MAX_ARGS)
		die("too many arguments");
	close_other_fds(fd_argument(argc, argv));
	reset_signals();
	reset_process_state();
	use_service_if_running(argc, argv);
	carry_file_capabilities();

	args[n++] = NSGATE_PYTHON;
	args[n++] = "-I";
	args[n++] = "-S";
	args[n++] = "-B";
	args[n++] = "-c";
	args[n++] = (char *)code;
	for (int i = 1; i < argc; i++)
		args[n++] = argv[i];
	args[n] = NULL;
	execve(NSGATE_PYTHON, args, clean_env);
	die("cannot execute " NSGATE_PYTHON);
}
