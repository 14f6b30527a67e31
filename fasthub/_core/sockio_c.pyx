# cython: language_level=3
"""Write to a non-blocking socket directly (the fast path's ``send(2)``, skipping uvloop's
write machinery when the transport holds nothing); twin: ``sockio_py.py``."""

import os

from libc.errno cimport EAGAIN, EINTR, errno


cdef extern from "errno.h":
    int EWOULDBLOCK


cdef extern from "sys/socket.h" nogil:
    ssize_t send(int sockfd, const void *buf, size_t length, int flags)
    int MSG_NOSIGNAL
    int MSG_DONTWAIT


cdef inline Py_ssize_t _send_one(int fd, const char *buf, Py_ssize_t n) noexcept nogil:
    cdef ssize_t r
    while True:
        r = send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT)
        if r >= 0:
            return r
        if errno == EINTR:
            continue
        if errno == EAGAIN or errno == EWOULDBLOCK:
            return 0
        return -1


cpdef Py_ssize_t send_some(int fd, bytes data) noexcept:
    """Bytes the socket took now (0 if it would block); -1 on an error (the transport reports it).

    Never raises (``noexcept``), so the flush, which calls it once per member, need not look for
    an exception after each call; ``None`` is an error too."""
    if data is None:
        return -1
    return _send_one(fd, data, len(data))


# One io_uring per process for batches of sends: a batch of N members costs one system call
# instead of N (the syscall's entry, exit and fd lookup are 9-14% of a small send on loopback
# here). Only IORING_OP_SEND with MSG_DONTWAIT, each completed before the call returns (the
# kernel answers -EAGAIN at once instead of waiting; checked when the ring is made), so a batch
# is a loop of send(2) done by the kernel: the same results, no request left behind.
cdef extern from *:
    """
    #include <unistd.h>
    #include <string.h>
    #include <stdint.h>
    #include <errno.h>
    #include <sys/socket.h>
    #if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__))
    #include <sys/syscall.h>
    #include <sys/mman.h>
    #define FH_URING 1
    /* The io_uring ABI (linux/io_uring.h, stable since 5.1), written out so that a build on old
       kernel headers (manylinux2014) has it too; the same numbers on x86-64 and arm64. */
    #define FH_NR_SETUP 425
    #define FH_NR_ENTER 426
    #define FH_OP_SEND 26
    #define FH_ENTER_GETEVENTS 1u
    #define FH_FEAT_SINGLE_MMAP 1u
    #define FH_OFF_SQ_RING 0ULL
    #define FH_OFF_CQ_RING 0x8000000ULL
    #define FH_OFF_SQES 0x10000000ULL
    struct fh_sqe {
        uint8_t opcode, flags; uint16_t ioprio; int32_t fd;
        uint64_t off, addr; uint32_t len, msg_flags; uint64_t user_data;
        uint16_t buf_index, personality; int32_t splice_fd_in; uint64_t addr3, pad;
    };
    struct fh_cqe { uint64_t user_data; int32_t res; uint32_t flags; };
    struct fh_sq_off { uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1; uint64_t user_addr; };
    struct fh_cq_off { uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1; uint64_t user_addr; };
    struct fh_params {
        uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd, resv[3];
        struct fh_sq_off sq_off; struct fh_cq_off cq_off;
    };
    _Static_assert(sizeof(struct fh_sqe) == 64, "sqe");
    _Static_assert(sizeof(struct fh_cqe) == 16, "cqe");
    _Static_assert(sizeof(struct fh_params) == 120, "params");
    #endif

    #define FH_RING_ENTRIES 64

    typedef struct {
        int fd;
    #ifdef FH_URING
        unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
        unsigned *cq_head, *cq_tail, *cq_mask;
        struct fh_sqe *sqes;
        struct fh_cqe *cqes;
        void *sq_ptr, *cq_ptr;
        size_t sq_len, cq_len, sqes_len;
        unsigned long long gen;  /* the batch's number, in each request's user_data */
    #endif
    } fh_ring;

    static void fh_ring_close(fh_ring *r) {
    #ifdef FH_URING
        if (r->fd < 0) return;
        munmap(r->sqes, r->sqes_len);
        if (r->cq_ptr != r->sq_ptr) munmap(r->cq_ptr, r->cq_len);
        munmap(r->sq_ptr, r->sq_len);
        close(r->fd);
    #endif
        r->fd = -1;
    }

    #ifdef FH_URING
    static int fh_enter(int fd, unsigned submit, unsigned wait) {
        return (int)syscall(FH_NR_ENTER, fd, submit, wait, wait ? FH_ENTER_GETEVENTS : 0, NULL, (size_t)0);
    }

    /* Queue n sends (n <= FH_RING_ENTRIES, the ring empty); user_data: the batch's number, then
       the entry's index in the low 8 bits (a completion of another batch is never taken for
       one of this one). */
    static void fh_queue(fh_ring *r, int n, const int *fds, const char *const *bufs, const Py_ssize_t *lens) {
        unsigned tail = *r->sq_tail, mask = *r->sq_mask;
        r->gen = (r->gen + 1) & 0xffffffffffffffULL;
        for (int i = 0; i < n; i++) {
            unsigned idx = (tail + i) & mask;
            struct fh_sqe *sqe = &r->sqes[idx];
            memset(sqe, 0, sizeof *sqe);
            sqe->opcode = FH_OP_SEND;
            sqe->fd = fds[i];
            sqe->addr = (unsigned long long)(uintptr_t)bufs[i];
            sqe->len = (unsigned)lens[i];
            sqe->msg_flags = MSG_NOSIGNAL | MSG_DONTWAIT;
            sqe->user_data = (r->gen << 8) | (unsigned long long)i;
            r->sq_array[idx] = idx;
        }
        __atomic_store_n(r->sq_tail, tail + n, __ATOMIC_RELEASE);
    }

    /* Take every completion there is; this batch's give res[index] = send(2)'s answer as
       send_some gives it. Returns how many of this batch's came. */
    static int fh_reap(fh_ring *r, Py_ssize_t *res, int n) {
        unsigned head = *r->cq_head, tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE), mask = *r->cq_mask;
        int got = 0;
        while (head != tail) {
            struct fh_cqe *cqe = &r->cqes[head & mask];
            unsigned long long k = cqe->user_data & 0xff;
            int v = cqe->res;
            if ((cqe->user_data >> 8) == r->gen && k < (unsigned long long)n && res[k] == -2) {
                res[k] = v >= 0 ? v : ((v == -EAGAIN || v == -EWOULDBLOCK || v == -EINTR) ? 0 : -1);
                got++;
            }
            head++;
        }
        __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
        return got;
    }
    #endif

    /* Make the ring; 0 if it works as a batch of send(2) must (see above), else -1 (no ring). */
    static int fh_ring_open(fh_ring *r) {
        r->fd = -1;
    #ifdef FH_URING
        r->gen = 0;
        struct fh_params p;
        memset(&p, 0, sizeof p);
        int fd = (int)syscall(FH_NR_SETUP, FH_RING_ENTRIES, &p);
        if (fd < 0) return -1;
        r->fd = fd;
        r->sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
        r->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct fh_cqe);
        int single = (p.features & FH_FEAT_SINGLE_MMAP) != 0;
        if (single && r->cq_len > r->sq_len) r->sq_len = r->cq_len;
        r->sq_ptr = mmap(NULL, r->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, FH_OFF_SQ_RING);
        if (r->sq_ptr == MAP_FAILED) { close(fd); r->fd = -1; return -1; }
        if (single) r->cq_ptr = r->sq_ptr;
        else {
            r->cq_ptr = mmap(NULL, r->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, FH_OFF_CQ_RING);
            if (r->cq_ptr == MAP_FAILED) { munmap(r->sq_ptr, r->sq_len); close(fd); r->fd = -1; return -1; }
        }
        r->sqes_len = p.sq_entries * sizeof(struct fh_sqe);
        r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, FH_OFF_SQES);
        if (r->sqes == MAP_FAILED) {
            if (r->cq_ptr != r->sq_ptr) munmap(r->cq_ptr, r->cq_len);
            munmap(r->sq_ptr, r->sq_len); close(fd); r->fd = -1; return -1;
        }
        char *sq = (char *)r->sq_ptr, *cq = (char *)r->cq_ptr;
        r->sq_head = (unsigned *)(sq + p.sq_off.head);
        r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
        r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
        r->sq_array = (unsigned *)(sq + p.sq_off.array);
        r->cq_head = (unsigned *)(cq + p.cq_off.head);
        r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
        r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
        r->cqes = (struct fh_cqe *)(cq + p.cq_off.cqes);
        /* The check: one send that goes (1 byte) and one that would block, submitted without
           waiting: both must be answered at once (IORING_OP_SEND known, MSG_DONTWAIT honoured
           instead of a poll armed for later). */
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0) { fh_ring_close(r); return -1; }
        int small = 4096;
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
        char chunk[4096];
        memset(chunk, 0, sizeof chunk);
        int filled = 0;
        for (int i = 0; i < 100000; i++) {
            if (send(sv[0], chunk, sizeof chunk, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) { filled = errno == EAGAIN || errno == EWOULDBLOCK; break; }
        }
        int fds[2] = {sv[1], sv[0]};
        const char *bufs[2] = {chunk, chunk};
        Py_ssize_t lens[2] = {1, 1}, res[2] = {-2, -2};
        int ok = filled;
        if (ok) {
            fh_queue(r, 2, fds, bufs, lens);
            ok = fh_enter(fd, 2, 0) == 2 && fh_reap(r, res, 2) == 2 && res[0] == 1 && res[1] == 0;
        }
        close(sv[0]);
        close(sv[1]);
        if (!ok) { fh_ring_close(r); return -1; }  /* closing the ring cancels a request left */
        return 0;
    #else
        return -1;
    #endif
    }

    /* n sends through the ring: res[i] as send_some's. What the ring did not take (an error of
       io_uring_enter) is taken back and sent with send(2) here, so every entry is sent once.
       Returns how many it took and did not answer within that call: none, after the check at
       open (each is answered within the call that submits it); such an entry may still go, so
       it is not sent again and counts as sent whole, and the caller stops using the ring. */
    static int fh_ring_send(fh_ring *r, int n, const int *fds, const char *const *bufs, const Py_ssize_t *lens, Py_ssize_t *res) {
        int i, lost = 0;
        for (i = 0; i < n; i++) res[i] = -2;
    #ifdef FH_URING
        if (r->fd >= 0 && n > 0) {
            unsigned head0 = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
            fh_queue(r, n, fds, bufs, lens);
            int submitted = 0, got, rc;
            for (;;) {
                rc = fh_enter(r->fd, (unsigned)(n - submitted), 0);
                if (rc > 0) { submitted += rc; if (submitted >= n) break; continue; }
                if (rc < 0 && errno == EINTR) continue;
                break;
            }
            if (submitted < n) {
                /* the kernel took the first ones (in order); the rest are taken back */
                unsigned taken = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE) - head0;
                submitted = (int)taken;
                __atomic_store_n(r->sq_tail, head0 + taken, __ATOMIC_RELEASE);
            }
            got = fh_reap(r, res, n);
            /* never a wait with the GIL held: what is not answered by now counts as lost */
            for (i = 0; i < submitted; i++) {
                if (res[i] == -2) { res[i] = lens[i]; lost++; }
            }
        }
    #endif
        for (i = 0; i < n; i++) {
            if (res[i] != -2) continue;
            for (;;) {
                ssize_t w = send(fds[i], bufs[i], (size_t)lens[i], MSG_NOSIGNAL | MSG_DONTWAIT);
                if (w >= 0) { res[i] = w; break; }
                if (errno == EINTR) continue;
                res[i] = (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
                break;
            }
        }
        return lost;
    }
    """
    enum: FH_RING_ENTRIES
    ctypedef struct fh_ring:
        int fd
    int fh_ring_open(fh_ring *r)
    void fh_ring_close(fh_ring *r)
    int fh_ring_send(fh_ring *r, int n, const int *fds, const char *const *bufs, const Py_ssize_t *lens, Py_ssize_t *res)


cdef fh_ring _ring
_ring.fd = -1
cdef bint _ring_tried = False  # made (or refused) on first use; again in a forked child
cdef bint _ring_off = False  # FASTHUB_NO_IO_URING, or the ring failed a batch: no ring
cdef int _ring_owner = 0  # the process that made the ring (0: none)
cdef list _kept = []  # the bytes of requests a failed ring may still read (never freed)


cdef extern from "unistd.h":
    int getpid()


cdef fh_ring *_ring_for_batch():
    """The process's ring, made on first use; NULL where there is none (each send a call).
    Used with the GIL held, so one thread at a time fills its submission queue."""
    global _ring_tried, _ring_off, _ring_owner
    if not _ring_tried:
        _ring_tried = True
        _ring_off = _env_off()
        if not _ring_off and fh_ring_open(&_ring) == 0:
            _ring_owner = getpid()
    if _ring_off or _ring.fd < 0:
        return NULL
    return &_ring


def _env_off() -> bool:
    try:
        from fasthub._ext import env_flag
        return env_flag("FASTHUB_NO_IO_URING", os.environ)
    except Exception:  # an environment that cannot be read: the default (the ring)
        return False


def _forget_ring() -> None:
    """In a forked child: the inherited ring shares the parent's queues, so the child lets go
    of its copy (its mappings and fd; the parent's ring stays) and makes its own when needed."""
    global _ring_tried, _ring_off, _ring_owner
    if not _kept:  # (a ring that failed keeps its mappings: a late request may still read)
        fh_ring_close(&_ring)
    _ring.fd = -1
    _ring_tried = False
    _ring_off = False
    _ring_owner = 0


os.register_at_fork(after_in_child=_forget_ring)


def ring_state() -> str:
    """"io_uring" if batches go through the kernel's ring in one call, else "send" (a call each)."""
    return "io_uring" if _ring_for_batch() != NULL else "send"


def ring_owner() -> int:
    """The pid of the process that made the ring in use (0: none): a forked child's own."""
    return _ring_owner if _ring_for_batch() != NULL else 0


cdef class SendBatch:
    """Up to ``BATCH`` sends of the fast path, made together by ``run`` (one io_uring call when
    the kernel has it, else one ``send(2)`` each); ``result(k)`` is what ``send_some`` would
    have answered for the ``k``-th. ``obs`` and ``datas`` hold each entry's owner and bytes
    (alive until ``clear``)."""

    def __cinit__(self) -> None:
        if sizeof(self.fds) // sizeof(int) != FH_RING_ENTRIES:  # the .pxd's arrays, the ring's depth
            raise SystemError("SendBatch: its arrays and BATCH differ")
        self.n = 0
        self.obs = []
        self.datas = []

    cpdef bint add(self, object ob, int fd, bytes data):
        """Queue ``data`` for ``fd``; True when the batch is full (``run`` it)."""
        cdef Py_ssize_t k = self.n
        if k >= FH_RING_ENTRIES:
            raise IndexError("SendBatch is full: run and clear it first")
        if data is None:
            raise TypeError("SendBatch.add: data is None")
        self.datas.append(data)
        try:
            self.obs.append(ob)
        except BaseException:
            self.datas.pop()
            raise
        self.fds[k] = fd
        self.bufs[k] = <const char *>data
        self.lens[k] = len(data)
        self.n = k + 1
        return self.n >= FH_RING_ENTRIES

    cpdef void run(self):
        global _ring_off
        cdef fh_ring *r
        cdef Py_ssize_t k
        if self.n == 0:
            return
        r = _ring_for_batch()
        if r == NULL:
            for k in range(self.n):
                self.res[k] = _send_one(self.fds[k], self.bufs[k], self.lens[k])
        elif fh_ring_send(r, <int>self.n, self.fds, self.bufs, self.lens, self.res):
            # a request the kernel took and did not answer (see fh_ring_send): its bytes stay
            # alive, and this process sends with send(2) from now on
            _kept.extend(self.datas)
            _ring_off = True
            import logging
            logging.getLogger("fasthub").error(
                "fasthub: io_uring left a send unanswered; sending with send(2) from now on")

    cpdef Py_ssize_t result(self, Py_ssize_t k):
        if not 0 <= k < self.n:
            raise IndexError("SendBatch.result: no such entry")
        return self.res[k]

    cpdef void clear(self):
        self.n = 0
        self.obs = []
        self.datas = []


BATCH = FH_RING_ENTRIES
