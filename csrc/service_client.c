/*
 * nsgate launcher: the client of nsgated, as nsgate-protocol(7) describes it (CLIENT, TARGET).
 *
 * Before the interpreter: with the effective ids set to the real ones, connect to NSGATE_SOCKET.
 * Any failure to connect (no such file, connection refused, permission denied, ...) puts the
 * ids back and returns: the in-process path applies its own checks, so falling back is always
 * safe, and a service that cannot be reached is a service not running. Once connected there is
 * no way back: become the caller for good (ids and capabilities), open the target as the
 * caller, send the request, write the answer out, exit with its status. Every failure from
 * there on ends the program with a one-line reason and status 1.
 *
 * It reads nothing of the arguments but what TARGET needs; the service checks the rest.
 */
#define _GNU_SOURCE
#include "service_client.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#define PACKET_MAX 65536
#define ARGC_MAX 4096
#define VERSION 1
#define NOT_TRIED INT_MIN /* open_target: the argument is not of a form the client opens */
#define NO_ANSWER "the nsgate service ended the request without an answer: " \
		  "what was done is what a helper killed there leaves (nsgate-protocol(7))"

struct header { /* of both packets, in the host's byte order */
	char magic[6];
	uint16_t version;
	uint32_t word[3]; /* request: helper, argc, target; answer: status, out, err */
};

_Static_assert(sizeof(struct header) == 20, "the header has no padding");
_Static_assert(sizeof(NSGATE_SOCKET) <= sizeof(((struct sockaddr_un *)0)->sun_path),
	       "NSGATE_SOCKET is too long for a unix socket address");

static unsigned char packet[PACKET_MAX + 1]; /* the request, then the answer (+1: too long) */
static struct header fields;

static void fail(const char *why)
{
	static const char prefix[] = NSGATE_HELPER ": ";
	(void)!write(2, prefix, sizeof(prefix) - 1);
	(void)!write(2, why, strlen(why));
	(void)!write(2, "\n", 1);
	_exit(1);
}

static int helper_id(void)
{
	static const char *const names[] = { "newuidmap", "newgidmap", "getsubids", "lxc-user-nic" };

	for (int i = 0; i < 4; i++)
		if (strcmp(NSGATE_HELPER, names[i]) == 0)
			return i;
	return -1;
}

/* The request, all but its target field; its length, or 0 when it does not fit one packet. */
static size_t build_request(int argc, char **argv)
{
	size_t len = sizeof(fields);

	if (helper_id() < 0 || argc - 1 > ARGC_MAX)
		return 0;
	for (int i = 1; i < argc; i++) {
		size_t n = strlen(argv[i]) + 1;
		if (n > PACKET_MAX - len)
			return 0;
		memcpy(packet + len, argv[i], n);
		len += n;
	}
	memcpy(fields.magic, "nsgate", 6);
	fields.version = VERSION;
	fields.word[0] = (uint32_t)helper_id();
	fields.word[1] = (uint32_t)(argc - 1);
	return len;
}

/* Effective ids = real ones, so the service sees the caller, never root; false on failure. */
static int act_as_caller(void)
{
	return (getegid() == getgid() || setegid(getgid()) == 0) &&
	       (geteuid() == getuid() || seteuid(getuid()) == 0);
}

/* Back to the launcher's ids (setuid root keeps 0 as its saved uid) for the in-process path. */
static void restore_ids(uid_t euid, gid_t egid)
{
	if ((geteuid() != euid && seteuid(euid) != 0) || (getegid() != egid && setegid(egid) != 0))
		fail("cannot restore the launcher's ids");
}

static int connect_service(void)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX, .sun_path = NSGATE_SOCKET };
	int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof(addr)) == 0)
		return sock;
	close(sock);
	return -1;
}

/* Every id the real one, no capability left (a file-capabilities install keeps its ids). */
static void become_caller_for_good(void)
{
	struct __user_cap_header_struct version = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct none[2] = { { 0, 0, 0 }, { 0, 0, 0 } };
	uid_t uid = getuid();
	gid_t gid = getgid();

	if (setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0 ||
	    syscall(SYS_capset, &version, none) != 0)
		fail("cannot drop privilege before talking to the nsgate service");
}

/* 1 to 10 decimal digits without a leading zero: the only numbers the client acts on. */
static int is_number(const char *s)
{
	size_t n = strspn(s, "0123456789");

	return n >= 1 && n <= 10 && s[n] == '\0' && s[0] != '0';
}

static int opened(int fd)
{
	return fd >= 0 ? fd : -errno;
}

static int open_in_proc(const char *pid, const char *rest, int flags)
{
	char path[32]; /* pid: at most 10 digits */

	snprintf(path, sizeof(path), "/proc/%s%s", pid, rest);
	return opened(open(path, flags | O_CLOEXEC));
}

/* fd:N is the caller's descriptor N; the socket took that number if the caller had none there. */
static int callers_fd(const char *number, int sock)
{
	long n = strtol(number, NULL, 10);

	if (n <= 2 || n > INT_MAX)
		return NOT_TRIED;
	if (n == sock)
		return -EBADF;
	return fcntl((int)n, F_GETFD) == -1 ? -EBADF : (int)n;
}

/* TARGET: a descriptor (>= 0), -errno of a failed open, or NOT_TRIED. */
static int open_target(int argc, char **argv, int sock)
{
	int id = helper_id();

	if ((id == 0 || id == 1) && argc > 1 && is_number(argv[1]))
		return open_in_proc(argv[1], "", O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
	if ((id == 0 || id == 1) && argc > 1 && strncmp(argv[1], "fd:", 3) == 0 &&
	    is_number(argv[1] + 3))
		return callers_fd(argv[1] + 3, sock);
	if (id == 3 && argc > 4 && strcmp(argv[1], "create") == 0 && is_number(argv[4]))
		return open_in_proc(argv[4], "/ns/net", O_RDONLY);
	if (id == 3 && argc > 4 && strcmp(argv[1], "delete") == 0)
		return opened(open(argv[4], O_PATH | O_CLOEXEC));
	return NOT_TRIED;
}

static void send_request(int sock, size_t len, int target)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control = { .buf = { 0 } };
	struct iovec iov = { packet, len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

	fields.word[2] = (uint32_t)(target >= 0 ? 0 : target == NOT_TRIED ? -1 : -target);
	memcpy(packet, &fields, sizeof(fields));
	if (target >= 0) {
		msg.msg_control = control.buf;
		msg.msg_controllen = sizeof(control.buf);
		struct cmsghdr *rights = CMSG_FIRSTHDR(&msg);
		rights->cmsg_level = SOL_SOCKET;
		rights->cmsg_type = SCM_RIGHTS;
		rights->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(rights), &target, sizeof(int));
	}
	/* A failed send (EPIPE: the service refused before reading) still leaves its answer
	 * to read: relay_answer says whether there is one. */
	(void)sendmsg(sock, &msg, MSG_NOSIGNAL);
}

/* As the in-process path does: a closed output loses the text, never the exit status. */
static void write_all(int fd, const unsigned char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		data += n;
		len -= (size_t)n;
	}
}

static void relay_answer(int sock)
{
	ssize_t n;

	while ((n = recv(sock, packet, sizeof(packet), 0)) < 0 && errno == EINTR)
		;
	if (n < (ssize_t)sizeof(fields) || n > PACKET_MAX)
		fail(NO_ANSWER);
	memcpy(&fields, packet, sizeof(fields));
	if (memcmp(fields.magic, "nsgate", 6) != 0)
		fail(NO_ANSWER);
	if (fields.version != VERSION)
		fail("the nsgate service speaks another version of its protocol: restart it");
	size_t text = (size_t)n - sizeof(fields), out = fields.word[1], err = fields.word[2];
	if (out > text || err != text - out)
		fail(NO_ANSWER);
	signal(SIGPIPE, SIG_IGN); /* the launcher reset it to SIG_DFL; Python ignores it too */
	write_all(1, packet + sizeof(fields), out);
	write_all(2, packet + sizeof(fields) + out, err);
	_exit(fields.word[0] == 0 ? 0 : 1);
}

void use_service_if_running(int argc, char **argv)
{
	uid_t euid = geteuid();
	gid_t egid = getegid();
	size_t len = build_request(argc, argv);
	int sock = -1;

	if (len > 0 && act_as_caller())
		sock = connect_service();
	if (sock < 0) {
		restore_ids(euid, egid);
		return;
	}
	become_caller_for_good();
	send_request(sock, len, open_target(argc, argv, sock));
	relay_answer(sock);
}
