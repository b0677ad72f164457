/* io_uring test driver for tests/collector/test_uring.py: runs file operations through io_uring with raw
 * syscalls (no liburing), one request at a time, and prints each result as "<step> <res>".
 *
 *   uring_ops STEP...       each STEP is comma-separated:
 *     openat,PATH,FLAGS[,MODE[,SLOT[,SKIP]]]   IORING_OP_OPENAT (AT_FDCWD); SLOT > 0: direct descriptor
 *                                             slot SLOT-1; SKIP 1: IOSQE_CQE_SKIP_SUCCESS
 *     openat2,PATH,FLAGS,RESOLVE              IORING_OP_OPENAT2
 *     read,FD | write,FD                      IORING_OP_READ / IORING_OP_WRITE of 5 bytes at offset 0
 *     readfix,IDX | writefix,IDX              the same on registered file IDX (IOSQE_FIXED_FILE)
 *     close,FD                                IORING_OP_CLOSE
 *     unlinkat,PATH[,FLAGS] | mkdirat,PATH,MODE | renameat,OLD,NEW[,FLAGS] | linkat,OLD,NEW[,FLAGS]
 *     symlinkat,TARGET,LINKPATH               the path operations (AT_FDCWD)
 *     sparse,N                                register N empty fixed-file slots
 *     decoy,MS                                the next step waits MS ms behind a linked timeout (the kernel
 *                                             has copied its names at submission); meanwhile the last
 *                                             byte of each of its names is rewritten to 'Z'
 *   FD may be $K: the result of step K (counted from 0).
 * Environment: URING_SQPOLL=1 submits through a kernel SQ polling thread (no syscall per request),
 * URING_ASYNC=1 sets IOSQE_ASYNC on every request (run by io-wq worker threads), URING_SKIP=1 sets
 * IOSQE_CQE_SKIP_SUCCESS on every request (a success posts no CQE: its result prints as 1 << 30).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef IORING_REGISTER_FILES2
#define IORING_REGISTER_FILES2 13
#endif

static int ring_fd;
static unsigned *sq_tail, *sq_mask, *sq_array, *sq_flags, *cq_head, *cq_tail, *cq_mask;
static int sqpoll, async_all, skip_all;
static struct io_uring_sqe *sqes;
static struct io_uring_cqe *cqes;
static long results[64];
static long decoy_ms;            /* the decoy step's delay for the next request, then 0 */
static char *decoy_names[2];     /* the next request's names, rewritten while it waits */

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void setup(void)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    if (sqpoll) {
        p.flags = IORING_SETUP_SQPOLL;
        p.sq_thread_idle = 2000;
    }
    ring_fd = syscall(__NR_io_uring_setup, 8, &p);
    if (ring_fd < 0)
        die("io_uring_setup");
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    char *sq = mmap(0, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQ_RING);
    char *cq = mmap(0, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_CQ_RING);
    sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                ring_fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
        die("mmap");
    sq_tail = (unsigned *)(sq + p.sq_off.tail);
    sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    sq_array = (unsigned *)(sq + p.sq_off.array);
    sq_flags = (unsigned *)(sq + p.sq_off.flags);
    cq_head = (unsigned *)(cq + p.cq_off.head);
    cq_tail = (unsigned *)(cq + p.cq_off.tail);
    cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
}

/* The decoy step: a timeout linked before the request (IORING_TIMEOUT_ETIME_SUCCESS: its expiry does not
 * cancel the link), both submitted at once; the names are rewritten while the request waits, then both
 * completions are reaped. Returns the request's res. */
static long submit_behind_timeout(struct io_uring_sqe *proto)
{
    struct __kernel_timespec ts = {.tv_sec = decoy_ms / 1000, .tv_nsec = (decoy_ms % 1000) * 1000000};
    unsigned tail = *sq_tail;
    unsigned t = tail & *sq_mask, r = (tail + 1) & *sq_mask;
    memset(&sqes[t], 0, sizeof(sqes[t]));
    sqes[t].opcode = IORING_OP_TIMEOUT;
    sqes[t].addr = (uint64_t)(uintptr_t)&ts;
    sqes[t].len = 1;
    sqes[t].timeout_flags = IORING_TIMEOUT_ETIME_SUCCESS;
    sqes[t].flags = IOSQE_IO_LINK;
    sqes[t].user_data = 1;
    sqes[r] = *proto;
    sqes[r].user_data = 2;
    sq_array[t] = t;
    sq_array[r] = r;
    __atomic_store_n(sq_tail, tail + 2, __ATOMIC_RELEASE);
    if (syscall(__NR_io_uring_enter, ring_fd, 2, 0, 0, NULL, 0) != 2)
        die("io_uring_enter");
    usleep(decoy_ms * 1000 / 3);
    for (int k = 0; k < 2; k++)
        if (decoy_names[k] && decoy_names[k][0])
            decoy_names[k][strlen(decoy_names[k]) - 1] = 'Z';
    long res = 1L << 30;
    for (int got = 0; got < 2;) {
        unsigned head = *cq_head;
        if (head == __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE)) {
            if (syscall(__NR_io_uring_enter, ring_fd, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
                die("io_uring_enter");
            continue;
        }
        struct io_uring_cqe *c = &cqes[head & *cq_mask];
        if (c->user_data == 2)
            res = c->res;
        __atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
        got++;
    }
    decoy_ms = 0;
    return res;
}

/* Submit one SQE; wait for its CQE unless `skip` (then a success posts none). Returns res, or 1 << 30
 * when no CQE came. */
static long submit(struct io_uring_sqe *proto, int skip)
{
    if (decoy_ms)
        return submit_behind_timeout(proto);
    unsigned tail = *sq_tail, idx = tail & *sq_mask;
    skip |= skip_all;
    sqes[idx] = *proto;
    sqes[idx].user_data = 0x5eed0000 + tail;
    if (skip)
        sqes[idx].flags |= IOSQE_CQE_SKIP_SUCCESS;
    if (async_all)
        sqes[idx].flags |= IOSQE_ASYNC;
    sq_array[idx] = idx;
    __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
    if (sqpoll) {         /* the kernel thread picks it up; wake it if it went idle, then wait */
        unsigned enter = IORING_ENTER_GETEVENTS;
        if (__atomic_load_n(sq_flags, __ATOMIC_ACQUIRE) & IORING_SQ_NEED_WAKEUP)
            enter |= IORING_ENTER_SQ_WAKEUP;
        if (syscall(__NR_io_uring_enter, ring_fd, 0, skip ? 0 : 1, enter, NULL, 0) < 0)
            die("io_uring_enter");
        if (skip)
            usleep(100000);  /* no CQE to wait for: give the poller time to take it */
    } else if (syscall(__NR_io_uring_enter, ring_fd, 1, skip ? 0 : 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0) {
        die("io_uring_enter");
    } else if (skip && skip_all) {
        usleep(100000);   /* an operation punted to io-wq may still be running: let it finish */
    }
    unsigned head = *cq_head;
    if (head == __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE))
        return 1L << 30;
    long res = cqes[head & *cq_mask].res;
    __atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
    return res;
}

static long fd_arg(const char *s)
{
    return s[0] == '$' ? results[atoi(s + 1)] : strtol(s, 0, 0);
}

int main(int argc, char **argv)
{
    static char buf[64];
    sqpoll = getenv("URING_SQPOLL") && atoi(getenv("URING_SQPOLL"));
    async_all = getenv("URING_ASYNC") && atoi(getenv("URING_ASYNC"));
    skip_all = getenv("URING_SKIP") && atoi(getenv("URING_SKIP"));
    setup();
    for (int i = 1; i < argc && i < 64; i++) {
        char *save, *op = strtok_r(argv[i], ",", &save), *a[6] = {0};
        for (int k = 0; k < 6; k++)
            a[k] = strtok_r(0, ",", &save);
        struct io_uring_sqe sqe;
        struct { uint64_t flags, mode, resolve; } how;  /* struct open_how */
        memset(&sqe, 0, sizeof(sqe));
        long res;
        int skip = 0;
        if (!strcmp(op, "openat")) {
            sqe.opcode = IORING_OP_OPENAT;
            sqe.fd = AT_FDCWD;
            sqe.addr = (uint64_t)(uintptr_t)a[0];
            sqe.open_flags = strtol(a[1], 0, 0);
            sqe.len = a[2] ? strtol(a[2], 0, 0) : 0;
            sqe.file_index = a[3] ? strtol(a[3], 0, 0) : 0;
            skip = a[4] && atoi(a[4]);
        } else if (!strcmp(op, "openat2")) {
            memset(&how, 0, sizeof(how));
            how.flags = strtol(a[1], 0, 0);
            how.resolve = strtol(a[2], 0, 0);
            sqe.opcode = IORING_OP_OPENAT2;
            sqe.fd = AT_FDCWD;
            sqe.addr = (uint64_t)(uintptr_t)a[0];
            sqe.len = sizeof(how);
            sqe.off = (uint64_t)(uintptr_t)&how;
        } else if (!strcmp(op, "read") || !strcmp(op, "write") || !strcmp(op, "readfix") || !strcmp(op, "writefix")) {
            sqe.opcode = op[0] == 'r' ? IORING_OP_READ : IORING_OP_WRITE;
            sqe.fd = fd_arg(a[0]);
            if (strstr(op, "fix"))
                sqe.flags |= IOSQE_FIXED_FILE;
            if (op[0] == 'w')
                memcpy(buf, "hello", 5);
            sqe.addr = (uint64_t)(uintptr_t)buf;
            sqe.len = 5;
            sqe.off = 0;
        } else if (!strcmp(op, "unlinkat") || !strcmp(op, "mkdirat")) {
            sqe.opcode = op[0] == 'u' ? IORING_OP_UNLINKAT : IORING_OP_MKDIRAT;
            sqe.fd = AT_FDCWD;
            sqe.addr = (uint64_t)(uintptr_t)a[0];
            if (op[0] == 'u')
                sqe.unlink_flags = a[1] ? strtol(a[1], 0, 0) : 0;
            else
                sqe.len = strtol(a[1], 0, 0);
        } else if (!strcmp(op, "renameat") || !strcmp(op, "linkat") || !strcmp(op, "symlinkat")) {
            sqe.opcode = op[0] == 'r' ? IORING_OP_RENAMEAT : op[0] == 'l' ? IORING_OP_LINKAT : IORING_OP_SYMLINKAT;
            sqe.fd = AT_FDCWD;
            sqe.addr = (uint64_t)(uintptr_t)a[0];
            sqe.addr2 = (uint64_t)(uintptr_t)a[1];
            if (op[0] != 's')
                sqe.len = AT_FDCWD;  /* the new path's dirfd */
            if (op[0] == 'r')
                sqe.rename_flags = a[2] ? strtol(a[2], 0, 0) : 0;
            else if (op[0] == 'l')
                sqe.hardlink_flags = a[2] ? strtol(a[2], 0, 0) : 0;
        } else if (!strcmp(op, "close")) {
            sqe.opcode = IORING_OP_CLOSE;
            sqe.fd = fd_arg(a[0]);
        } else if (!strcmp(op, "sysopen") || !strcmp(op, "sysclose")) {  /* plain syscalls, no io_uring */
            res = op[3] == 'o' ? open(a[0], O_RDONLY) : close(fd_arg(a[0]));
            results[i - 1] = res;
            printf("%s %ld\n", op, res);
            continue;
        } else if (!strcmp(op, "decoy")) {
            decoy_ms = atol(a[0]);
            printf("%s 0\n", op);
            continue;
        } else if (!strcmp(op, "sparse")) {
            struct io_uring_rsrc_register reg;
            memset(&reg, 0, sizeof(reg));
            reg.nr = atoi(a[0]);
            reg.flags = IORING_RSRC_REGISTER_SPARSE;
            res = syscall(__NR_io_uring_register, ring_fd, IORING_REGISTER_FILES2, &reg, sizeof(reg));
            results[i - 1] = res;
            printf("%s %ld\n", op, res < 0 ? -1L : res);
            continue;
        } else {
            fprintf(stderr, "unknown step %s\n", op);
            return 2;
        }
        decoy_names[0] = a[0];       /* the names (for the ops that have them): what a decoy rewrites */
        decoy_names[1] = (!strcmp(op, "renameat") || !strcmp(op, "linkat") || !strcmp(op, "symlinkat")) ? a[1] : 0;
        if (strstr(op, "read") || strstr(op, "write") || !strcmp(op, "close"))
            decoy_names[0] = 0;
        res = submit(&sqe, skip);
        results[i - 1] = res;
        printf("%s %ld\n", op, res);
    }
    fflush(stdout);
    return 0;
}
