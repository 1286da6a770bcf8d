// epoll over the uffds, the drain that moves every pending uffd_msg into the owning worker's ring in
// one call, and FdWatcher: a libuv poll handle so the main thread learns of readiness without ever
// blocking its event loop.
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>
#include <napi.h>
#include "args.h"
#include "errors.h"
#include "ring.h"
#include "scm.h"

// A forked child's uffd is born in the read() below; it goes to the guardian from here, before
// anything else runs, so that a daemon killed at any later moment cannot leave the child's missing
// pages to be read as zeros (between the read and this send, the guardian still kills the child as
// a descendant of a process it knows).
int guardian_fd = -1;

static void GuardChild(int child_uffd, int parent_uffd) {
  if (guardian_fd < 0) return;
  uint32_t msg[3] = {2 /* CHILD */, (uint32_t)child_uffd, (uint32_t)parent_uffd};
  // A guardian that is gone or stuck must not stall the drain: the daemon still serves the child.
  SendWithFds(guardian_fd, msg, sizeof msg, &child_uffd, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
}

// An mremap, MADV_DONTNEED or munmap changes the process's map in a way only this daemon records:
// a daemon started later (--resume) from the images would copy image pages where the process now
// has zeros, or at addresses that moved. The guardian learns it here, before anything acts on the
// event, and then never offers that process (or a child forked from it later) for resumption.
static void GuardTaint(int uffd) {
  if (guardian_fd < 0) return;
  uint32_t msg[3] = {8 /* TAINT */, (uint32_t)uffd, 0};
  SendWithFds(guardian_fd, msg, sizeof msg, nullptr, 0, MSG_NOSIGNAL | MSG_DONTWAIT);
}

// The TAINT and CHILD sends above follow the read() of their event by a few microseconds; a daemon
// killed in between leaves the guardian believing a tree resumable whose map changed, or whose child
// it never heard of. This word, in a page shared with the guardian, is raised from just before each
// read() until the sends its messages need are done, and lowered at once after a read that brought
// page faults only (an unserved fault is no loss: a resumed daemon wakes every thread). A guardian
// that finds it non-zero after the daemon died does not wait for a resume, it stops the tree (and
// every descendant). Held per read, not per drain: a kill during a drain that only moved faults
// would otherwise make a resumable tree look unresumable.
static uint32_t *reading_word = nullptr;

// guardReadingWord(): a memfd whose first word counts drains in progress, for the guardian to map.
static Napi::Value GuardReadingWord(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = memfd_create("faultline-reading", MFD_CLOEXEC);
  if (fd < 0) return ThrowErrno(env, "memfd_create", errno);
  if (ftruncate(fd, 4096) < 0) {
    int e = errno;
    close(fd);
    return ThrowErrno(env, "ftruncate", e);
  }
  void *p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    close(fd);
    return ThrowErrno(env, "mmap", e);
  }
  // The previous word (a resumed daemon's second guardian line) stays mapped: a drain of another
  // thread may still hold it.
  __atomic_store_n(&reading_word, (uint32_t *)p, __ATOMIC_SEQ_CST);
  return Napi::Number::New(env, fd);
}

// Fault injection for the tests only: SIGKILL this process right after reading an event that is not
// a page fault, before the guardian hears of it (the window reading_word exists for).
static bool DieAfterEventRead() {
  static int on = -1;
  if (on < 0) on = getenv("FAULTLINE_TEST_DIE_AFTER_EVENT_READ") != nullptr;
  return on == 1;
}

// setGuardian(fd): where forked children's uffds are sent as they are read (-1: nowhere).
static Napi::Value SetGuardian(const Napi::CallbackInfo &info) {
  if (!CheckArgs(info, 1, "setGuardian")) return info.Env().Undefined();
  guardian_fd = ArgInt(info, 0);
  return info.Env().Undefined();
}

static Napi::Value EpollCreate(const Napi::CallbackInfo &info) {
  int fd = epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) return ThrowErrno(info.Env(), "epoll_create1", errno);
  return Napi::Number::New(info.Env(), fd);
}

// epollAdd(epfd, fd, ring): the ring index rides in the event's data next to the fd, so the drain
// needs no table of its own.
static Napi::Value EpollAdd(const Napi::CallbackInfo &info) {
  if (!CheckArgs(info, 3, "epollAdd")) return info.Env().Undefined();
  struct epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.u64 = ((uint64_t)(uint32_t)ArgInt(info, 2) << 32) | (uint32_t)ArgInt(info, 1);
  if (epoll_ctl(ArgInt(info, 0), EPOLL_CTL_ADD, ArgInt(info, 1), &ev) < 0)
    return ThrowErrno(info.Env(), "epoll_ctl(ADD)", errno);
  return info.Env().Undefined();
}

static Napi::Value EpollDel(const Napi::CallbackInfo &info) {
  if (!CheckArgs(info, 2, "epollDel")) return info.Env().Undefined();
  if (epoll_ctl(ArgInt(info, 0), EPOLL_CTL_DEL, ArgInt(info, 1), nullptr) < 0 && errno != ENOENT && errno != EBADF)
    return ThrowErrno(info.Env(), "epoll_ctl(DEL)", errno);
  return info.Env().Undefined();
}

struct RingView {
  uint8_t *base;
  uint32_t *head, *tail, *copying, *reading, *events, *want_read, capacity;
  int state;  // 0 untouched in this drain, 1 reading (READING held), -1 its worker is copying, -2 another drainer holds READING
};

static bool ViewOf(Napi::Value v, RingView *r) {
  if (!v.IsTypedArray()) return false;
  Napi::Uint8Array a = v.As<Napi::Uint8Array>();
  r->base = a.Data();
  r->head = (uint32_t *)(r->base + RING_HEAD_OFFSET);
  r->tail = (uint32_t *)(r->base + RING_TAIL_OFFSET);
  r->copying = (uint32_t *)(r->base + RING_COPYING_OFFSET);
  r->reading = (uint32_t *)(r->base + RING_READING_OFFSET);
  r->events = (uint32_t *)(r->base + RING_EVENTS_OFFSET);
  r->want_read = (uint32_t *)(r->base + RING_WANT_READ_OFFSET);
  r->state = 0;
  r->capacity = *(uint32_t *)(r->base + RING_CAPACITY_OFFSET);
  return r->capacity && a.ByteLength() >= RING_HEADER_BYTES + (size_t)r->capacity * RING_RECORD_BYTES;
}

static uint8_t *Slot(RingView *r, uint32_t seq) {
  return r->base + RING_HEADER_BYTES + (size_t)(seq & (r->capacity - 1)) * RING_RECORD_BYTES;
}

// drain(epfd, rings: Uint8Array[], firstRing = 0) -> bitmask (by position in `rings`) of rings that
// received records. Each event's ring index minus firstRing selects the ring, so a worker can drain
// its own shard's epoll set with just its own ring.
// A uffd whose ring is full is left unread: epoll is level-triggered, so it is reported again once
// the worker has made room. A uffd whose read fails (not EAGAIN) or hits EOF is taken out of the
// epoll set and reported to its worker as REC_UFFD_ERROR, so the set never spins on a dead fd.
static Napi::Value Drain(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 2, "drain")) return env.Undefined();
  int epfd = ArgInt(info, 0);
  Napi::Array arr = info[1].As<Napi::Array>();
  uint32_t first = info.Length() > 2 ? (uint32_t)ArgInt(info, 2) : 0;
  RingView rings[32];
  uint32_t nrings = arr.Length() > 32 ? 32 : arr.Length();
  for (uint32_t i = 0; i < nrings; i++)
    if (!ViewOf(arr.Get(i), &rings[i])) {
      Napi::TypeError::New(env, "drain: ring " + std::to_string(i) + " is not a ring buffer").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  struct epoll_event evs[128];
  int n = epoll_wait(epfd, evs, 128, 0);
  if (n < 0) {
    if (errno == EINTR) return Napi::Number::New(env, 0);
    return ThrowErrno(env, "epoll_wait", errno);
  }
  double now = MonotonicNs();
  uint32_t touched = 0;
  uint32_t *word = __atomic_load_n(&reading_word, __ATOMIC_SEQ_CST);
  for (int i = 0; i < n; i++) {
    int fd = (int)(uint32_t)evs[i].data.u64;
    uint32_t ri = (uint32_t)(evs[i].data.u64 >> 32) - first;
    if (ri >= nrings) continue;
    RingView *r = &rings[ri];
    if (r->state == 0) {
      // READING is also the producer lock: the main thread and the ring's own worker (between fill
      // chunks) may both drain a shard, never at once, so the ring keeps a single writer.
      uint32_t unlocked = 0;
      if (!__atomic_compare_exchange_n(r->reading, &unlocked, 1, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
        r->state = -2;
      } else if (__atomic_load_n(r->copying, __ATOMIC_SEQ_CST) == 0) {
        r->state = 1;
      } else {
        // Copies in flight: leave this ring's uffds unread (epoll is level-triggered and reports
        // them again), and ask copiers to hold off so the next try gets in. Without it a steady
        // stream of fill slices from several workers kept a fault unread for milliseconds; waiting
        // here instead burns a CPU the copiers need (docs/DESIGN.md, "The fault tail").
        __atomic_store_n(r->want_read, 1, __ATOMIC_SEQ_CST);
        __atomic_store_n(r->reading, 0, __ATOMIC_SEQ_CST);
        r->state = -1;
      }
    }
    if (r->state < 0) continue;
    uint32_t head = __atomic_load_n(r->head, __ATOMIC_RELAXED);
    for (;;) {
      uint32_t tail = __atomic_load_n(r->tail, __ATOMIC_ACQUIRE);
      uint32_t room = r->capacity - (head - tail);
      if (room == 0) break;
      struct uffd_msg msgs[32];
      size_t want = room < 32 ? room : 32;
      if (word) __atomic_add_fetch(word, 1, __ATOMIC_SEQ_CST);
      ssize_t got = read(fd, msgs, want * sizeof msgs[0]);
      int read_errno = errno;
      // a malformed read is an error record below, with nothing for the guardian to hear of
      size_t nmsg = got > 0 && got % sizeof msgs[0] == 0 ? (size_t)got / sizeof msgs[0] : 0;
      bool events = false;
      for (size_t k = 0; k < nmsg; k++) events |= msgs[k].event != UFFD_EVENT_PAGEFAULT;
      if (word && !events) __atomic_sub_fetch(word, 1, __ATOMIC_SEQ_CST);
      if (got < 0 && read_errno == EAGAIN) break;
      if (got < 0 && read_errno == EINTR) continue;
      if (got <= 0 || got % sizeof msgs[0]) {
        int err = got < 0 ? read_errno : (got == 0 ? 0 : EIO);
        epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nullptr);
        uint8_t *s = Slot(r, head++);
        *(uint32_t *)(s + REC_KIND_OFFSET) = REC_UFFD_ERROR;
        *(int32_t *)(s + REC_FD_OFFSET) = fd;
        *(double *)(s + REC_TIME_OFFSET) = now;
        *(int32_t *)(s + REC_PAYLOAD_OFFSET) = err;
        break;
      }
      for (size_t k = 0; k < (size_t)got / sizeof msgs[0]; k++) {
        // Counted before head is published, under READING: a worker that sees the count ahead of
        // what it handled knows an mm change it has not caught up with is queued.
        if (msgs[k].event != UFFD_EVENT_PAGEFAULT) __atomic_add_fetch(r->events, 1, __ATOMIC_SEQ_CST);
        if (msgs[k].event != UFFD_EVENT_PAGEFAULT && DieAfterEventRead()) raise(SIGKILL);
        if (msgs[k].event == UFFD_EVENT_FORK) GuardChild((int)msgs[k].arg.fork.ufd, fd);
        else if (msgs[k].event == UFFD_EVENT_REMAP || msgs[k].event == UFFD_EVENT_REMOVE || msgs[k].event == UFFD_EVENT_UNMAP) GuardTaint(fd);
        uint8_t *s = Slot(r, head++);
        *(uint32_t *)(s + REC_KIND_OFFSET) = REC_UFFD_MSG;
        *(int32_t *)(s + REC_FD_OFFSET) = fd;
        *(double *)(s + REC_TIME_OFFSET) = now;
        memcpy(s + REC_PAYLOAD_OFFSET, &msgs[k], sizeof msgs[k]);
      }
      // the guardian has heard of every FORK and REMAP/REMOVE/UNMAP of this read
      if (word && events) __atomic_sub_fetch(word, 1, __ATOMIC_SEQ_CST);
      if ((size_t)got < want * sizeof msgs[0]) break;
    }
    if (head != __atomic_load_n(r->head, __ATOMIC_RELAXED)) {
      __atomic_store_n(r->head, head, __ATOMIC_RELEASE);
      touched |= 1u << ri;
    }
  }
  for (uint32_t i = 0; i < nrings; i++) {
    // Read, or nothing left to read (the uffd that was waiting went away, or someone read it):
    // either way no drain is waiting on this ring's copies any more.
    if (rings[i].state == 1 || rings[i].state == 0) __atomic_store_n(rings[i].want_read, 0, __ATOMIC_SEQ_CST);
    if (rings[i].state == 1) __atomic_store_n(rings[i].reading, 0, __ATOMIC_SEQ_CST);
  }
  return Napi::Number::New(env, touched);
}

static Napi::Value RingLayout(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("HEAD_OFFSET", RING_HEAD_OFFSET);
  o.Set("TAIL_OFFSET", RING_TAIL_OFFSET);
  o.Set("CAPACITY_OFFSET", RING_CAPACITY_OFFSET);
  o.Set("COPYING_OFFSET", RING_COPYING_OFFSET);
  o.Set("EVENTS_OFFSET", RING_EVENTS_OFFSET);
  o.Set("READING_OFFSET", RING_READING_OFFSET);
  o.Set("SLEEPING_OFFSET", RING_SLEEPING_OFFSET);
  o.Set("WANT_READ_OFFSET", RING_WANT_READ_OFFSET);
  o.Set("HEADER_BYTES", RING_HEADER_BYTES);
  o.Set("RECORD_BYTES", RING_RECORD_BYTES);
  o.Set("KIND_OFFSET", REC_KIND_OFFSET);
  o.Set("FD_OFFSET", REC_FD_OFFSET);
  o.Set("TIME_OFFSET", REC_TIME_OFFSET);
  o.Set("PAYLOAD_OFFSET", REC_PAYLOAD_OFFSET);
  o.Set("PAYLOAD_BYTES", REC_PAYLOAD_BYTES);
  o.Set("UFFD_MSG", (int)REC_UFFD_MSG);
  o.Set("PROCESS", (int)REC_PROCESS);
  o.Set("RESTORE_FINISHED", (int)REC_RESTORE_FINISHED);
  o.Set("STOP", (int)REC_STOP);
  o.Set("UFFD_ERROR", (int)REC_UFFD_ERROR);
  o.Set("UFFD_MSG_BYTES", (int)sizeof(struct uffd_msg));
  return o;
}

static Napi::Value Now(const Napi::CallbackInfo &info) { return Napi::Number::New(info.Env(), MonotonicNs()); }

// FdWatcher(fd, callback): calls back on the main thread whenever fd is readable (level-triggered).
class FdWatcher : public Napi::ObjectWrap<FdWatcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdWatcher", {InstanceMethod("stop", &FdWatcher::Stop)});
  }
  FdWatcher(const Napi::CallbackInfo &info) : Napi::ObjectWrap<FdWatcher>(info) {
    Napi::Env env = info.Env();
    if (!CheckArgs(info, 2, "FdWatcher")) return;
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    uv_loop_t *loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    poll_ = new uv_poll_t;
    int rc = uv_poll_init(loop, poll_, ArgInt(info, 0));
    if (rc == 0) {
      poll_->data = this;
      rc = uv_poll_start(poll_, UV_READABLE, OnReady);
    }
    if (rc != 0) {
      delete poll_;
      poll_ = nullptr;
      ThrowErrno(env, "uv_poll_start", -rc);
      return;
    }
    Ref();  // alive while watching, even if JS drops its handle
  }
  ~FdWatcher() override { Close(); }

 private:
  static void OnReady(uv_poll_t *h, int status, int events) {
    FdWatcher *self = (FdWatcher *)h->data;
    Napi::Env env = self->callback_.Env();
    Napi::HandleScope scope(env);
    self->callback_.MakeCallback(env.Global(), {Napi::Number::New(env, status < 0 ? -status : 0)});
  }
  void Close() {
    if (!poll_) return;
    uv_poll_stop(poll_);
    uv_close((uv_handle_t *)poll_, [](uv_handle_t *h) { delete (uv_poll_t *)h; });
    poll_ = nullptr;
  }
  Napi::Value Stop(const Napi::CallbackInfo &info) {
    if (poll_) {
      Close();
      Unref();
    }
    return info.Env().Undefined();
  }
  Napi::FunctionReference callback_;
  uv_poll_t *poll_ = nullptr;
};

void InitEpoll(Napi::Env env, Napi::Object exports) {
  exports.Set("epollCreate", Napi::Function::New(env, EpollCreate));
  exports.Set("epollAdd", Napi::Function::New(env, EpollAdd));
  exports.Set("epollDel", Napi::Function::New(env, EpollDel));
  exports.Set("drain", Napi::Function::New(env, Drain));
  exports.Set("setGuardian", Napi::Function::New(env, SetGuardian));
  exports.Set("guardReadingWord", Napi::Function::New(env, GuardReadingWord));
  exports.Set("ringLayout", Napi::Function::New(env, RingLayout));
  exports.Set("monotonicNs", Napi::Function::New(env, Now));
  exports.Set("FdWatcher", FdWatcher::Define(env));
}
