"""Builds nsgate's cffi module `_nsgate_sys`: the system calls Python 3.11 lacks.

Run at build time: `python3 csrc/sysmodule_build.py OUTDIR`. The module is API mode (compiled C),
so at run time only `_cffi_backend` is needed, never a compiler.
"""

import sys

from cffi import FFI

CDEF = """
typedef unsigned int uid_t;
typedef unsigned int gid_t;

int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
          unsigned long arg5);
int setns(int fd, int nstype);
int setfsuid(uid_t fsuid);
int setfsgid(gid_t fsgid);

int nsg_capget(uint64_t *effective, uint64_t *permitted, uint64_t *inheritable);
int nsg_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable);
long nsg_fstatfs_type(int fd);
int nsg_ioprio_set_default(void);
int nsg_populate_write(unsigned long start, unsigned long length);
int nsg_capbset_drop(uint64_t keep, int last);

int nsg_seccomp_allow_only(const char **names, int count, int refusal_errno);
long nsg_seccomp_compile(const char **names, int count, int refusal_errno, unsigned char *out,
                         size_t max);
int nsg_seccomp_load(const unsigned char *filter, size_t len);

struct nsg_subid_range { unsigned long start; unsigned long count; };
typedef struct nsg_plugin nsg_plugin;
nsg_plugin *nsg_plugin_open(const char *libname, char *err, size_t errlen);
int nsg_plugin_has_range(nsg_plugin *plugin, const char *owner, unsigned long start,
                         unsigned long count, int idtype, bool *result);
int nsg_plugin_list_ranges(nsg_plugin *plugin, const char *owner, int idtype,
                           struct nsg_subid_range *out, int max, int *count);
"""

SOURCE = r"""
#include <dlfcn.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <seccomp.h>
#include <sys/fsuid.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

static int nsg_capget(uint64_t *effective, uint64_t *permitted, uint64_t *inheritable)
{
    struct __user_cap_header_struct head = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];

    if (syscall(SYS_capget, &head, data) != 0)
        return -1;
    *effective = data[0].effective | (uint64_t)data[1].effective << 32;
    *permitted = data[0].permitted | (uint64_t)data[1].permitted << 32;
    *inheritable = data[0].inheritable | (uint64_t)data[1].inheritable << 32;
    return 0;
}

static int nsg_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable)
{
    struct __user_cap_header_struct head = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2] = {
        { (uint32_t)effective, (uint32_t)permitted, (uint32_t)inheritable },
        { (uint32_t)(effective >> 32), (uint32_t)(permitted >> 32),
          (uint32_t)(inheritable >> 32) },
    };
    return (int)syscall(SYS_capset, &head, data);
}

/* This process's I/O priority back to the kernel's default (IOPRIO_CLASS_NONE: it follows the
 * nice value), whatever class its caller gave it. */
static int nsg_ioprio_set_default(void)
{
    return (int)syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, 0, 0);
}

/* Fault in [start, start + length) writable now, copying shared pages (Linux 5.14). */
static int nsg_populate_write(unsigned long start, unsigned long length)
{
    return madvise((void *)start, length, 23 /* MADV_POPULATE_WRITE */);
}

/* Drop from the bounding set every capability 0..last not in `keep` that is still in it, one
 * prctl each, lowest first: the loop a helper would otherwise make through Python, without its
 * cost per call, and without the kernel's credential copy for a capability already gone (a
 * service unit's CapabilityBoundingSet= leaves a handful). */
static int nsg_capbset_drop(uint64_t keep, int last)
{
    for (int cap = 0; cap <= last && cap < 64; cap++) {
        if (keep & (1ULL << cap))
            continue;
        int held = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
        if (held < 0 || (held == 1 && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0))
            return -1;
    }
    return 0;
}

static long nsg_fstatfs_type(int fd)
{
    struct statfs st;

    if (fstatfs(fd, &st) != 0)
        return -1;
    return (long)st.f_type;
}

/*
 * A seccomp filter allowing exactly the named system calls; every other one fails with
 * `refusal_errno` (an error the helper reports and exits on, never a kill: a signal-killed
 * helper counts as success to util-linux's unshare). Names unknown on this architecture are
 * skipped; `socket` is allowed for AF_UNIX (syslog) and AF_NETLINK only. NULL (and *rc, a
 * negative errno) on failure.
 */
static scmp_filter_ctx allow_only(const char **names, int count, int refusal_errno, int *rc)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(refusal_errno));

    *rc = 0;
    if (ctx == NULL) {
        *rc = -ENOMEM;
        return NULL;
    }
    for (int i = 0; i < count && *rc == 0; i++) {
        int nr = seccomp_syscall_resolve_name(names[i]);
        if (nr == __NR_SCMP_ERROR)
            continue;
        if (strcmp(names[i], "socket") == 0) {
            *rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, SCMP_A0(SCMP_CMP_EQ, AF_UNIX));
            if (*rc == 0)
                *rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1,
                                       SCMP_A0(SCMP_CMP_EQ, AF_NETLINK));
        } else
            *rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
    }
    if (*rc != 0) {
        seccomp_release(ctx);
        return NULL;
    }
    return ctx;
}

/* Install that filter now. Returns 0 or a negative errno. */
static int nsg_seccomp_allow_only(const char **names, int count, int refusal_errno)
{
    int rc;
    scmp_filter_ctx ctx = allow_only(names, count, refusal_errno, &rc);

    if (ctx == NULL)
        return rc;
    rc = seccomp_load(ctx);
    seccomp_release(ctx);
    return rc;
}

/*
 * The same filter as the BPF program seccomp_load would install (libseccomp generates both
 * alike), into `out`: nsgated compiles its helpers' filters once, before its first fork, and
 * a worker only loads one (nsg_seccomp_load). Returns the program's length in bytes, or a
 * negative errno (-ENOSPC: longer than `max`).
 */
static long nsg_seccomp_compile(const char **names, int count, int refusal_errno,
                                unsigned char *out, size_t max)
{
    int rc;
    scmp_filter_ctx ctx = allow_only(names, count, refusal_errno, &rc);
    long len = 0;
    ssize_t n;

    if (ctx == NULL)
        return rc;
    int fd = memfd_create("nsgate-seccomp", MFD_CLOEXEC);
    if (fd < 0) {
        seccomp_release(ctx);
        return -errno;
    }
    rc = seccomp_export_bpf(ctx, fd);
    seccomp_release(ctx);
    if (rc == 0 && lseek(fd, 0, SEEK_SET) != 0)
        rc = -errno;
    while (rc == 0 && (n = read(fd, out + len, max - (size_t)len)) > 0)
        len += n;
    if (rc == 0 && n < 0)
        rc = -errno;
    if (rc == 0 && (size_t)len == max && read(fd, out, 1) != 0)
        rc = -ENOSPC;
    close(fd);
    return rc != 0 ? rc : len;
}

/*
 * Install a program from nsg_seccomp_compile as seccomp_load does with libseccomp's default
 * attributes: no_new_privs first, then seccomp(SECCOMP_SET_MODE_FILTER) without flags
 * (prctl(PR_SET_SECCOMP) where the kernel has no seccomp(2)). Returns 0 or a negative errno.
 */
static int nsg_seccomp_load(const unsigned char *filter, size_t len)
{
    struct sock_fprog prog = {
        .len = (unsigned short)(len / sizeof(struct sock_filter)),
        .filter = (struct sock_filter *)(void *)filter,
    };

    if (len == 0 || len % sizeof(struct sock_filter) != 0 ||
        len / sizeof(struct sock_filter) > BPF_MAXINSNS)
        return -EINVAL;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -errno;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0U, &prog) == 0)
        return 0;
    if (errno != ENOSYS)
        return -errno;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0 ? 0 : -errno;
}

/* shadow's libsubid NSS plugin interface (lib/nss.c, libsubid/subid.h). A process may hold
 * several plugins at once (one per module of the `subid:` line), each its own handle; a plugin
 * stays loaded until the process ends, as in shadow. */
struct nsg_subid_range { unsigned long start; unsigned long count; };
typedef int (*has_range_fn)(const char *, unsigned long, unsigned long, int, bool *);
typedef int (*list_ranges_fn)(const char *, int, struct nsg_subid_range **, int *);
typedef void (*free_fn)(void *);
typedef struct nsg_plugin {
    has_range_fn has_range;
    list_ranges_fn list_ranges;
    free_fn free_ranges;
} nsg_plugin;

/* NULL, and the reason in `err`, if the module cannot be loaded or lacks a function nsgate
 * calls. */
static nsg_plugin *nsg_plugin_open(const char *libname, char *err, size_t errlen)
{
    void *h = dlopen(libname, RTLD_NOW | RTLD_LOCAL);
    nsg_plugin *plugin;

    if (h == NULL) {
        snprintf(err, errlen, "%s", dlerror());
        return NULL;
    }
    plugin = calloc(1, sizeof *plugin);
    if (plugin == NULL) {
        snprintf(err, errlen, "%s: out of memory", libname);
        dlclose(h);
        return NULL;
    }
    plugin->has_range = (has_range_fn)dlsym(h, "shadow_subid_has_range");
    plugin->list_ranges = (list_ranges_fn)dlsym(h, "shadow_subid_list_owner_ranges");
    plugin->free_ranges = (free_fn)dlsym(h, "shadow_subid_free");
    if (plugin->free_ranges == NULL)
        plugin->free_ranges = free;
    if (plugin->has_range == NULL || plugin->list_ranges == NULL) {
        snprintf(err, errlen, "%s does not provide %s", libname,
                 plugin->has_range == NULL ? "shadow_subid_has_range"
                                           : "shadow_subid_list_owner_ranges");
        free(plugin);
        dlclose(h);
        return NULL;
    }
    return plugin;
}

static int nsg_plugin_has_range(nsg_plugin *plugin, const char *owner, unsigned long start,
                                unsigned long count, int idtype, bool *result)
{
    *result = false;
    if (plugin == NULL)
        return -1;
    return plugin->has_range(owner, start, count, idtype, result);
}

static int nsg_plugin_list_ranges(nsg_plugin *plugin, const char *owner, int idtype,
                                  struct nsg_subid_range *out, int max, int *count)
{
    struct nsg_subid_range *ranges = NULL;
    int n = 0, status;

    *count = 0;
    if (plugin == NULL)
        return -1;
    status = plugin->list_ranges(owner, idtype, &ranges, &n);
    if (status == 0 && ranges != NULL) {
        if (n < 0)
            n = 0;
        for (int i = 0; i < n && i < max; i++)
            out[i] = ranges[i];
        *count = n < max ? n : max;
    }
    if (ranges != NULL)
        plugin->free_ranges(ranges);
    return status;
}
"""


def builder() -> FFI:
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source("_nsgate_sys", SOURCE, libraries=["dl", "seccomp"])
    return ffi


if __name__ == "__main__":
    builder().compile(tmpdir=sys.argv[1] if len(sys.argv) > 1 else ".", verbose=False)
