// The fill's hot loop: UFFDIO_COPY of a list of runs from one buffer (an image mmap), slice by
// slice, entering the owner ring's copy gate around every ioctl, in one N-API call. The policy
// (which runs, how long before a waiting fault cuts in, what an errno means) stays in TypeScript;
// this only saves the per-slice crossings and the bookkeeping between them.
#include <errno.h>
#include <sched.h>
#include <linux/userfaultfd.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <napi.h>
#include "args.h"
#include "errors.h"
#include "ring.h"

enum FillStatus { FILL_DONE = 0, FILL_YIELDED = 1, FILL_EVENT = 2, FILL_ERRNO = 3 };
// About 50 µs of loads: far longer than one drain holds READING (same bound as ring.ts).
static const int kMaxReadingSpins = 20000;
// How long a helper waits for a drain of the owner's shard before giving its lease back.
static const double kMaxWantWaitNs = 200000;

// The gate protocol of ring.h, for a copier that may not be the ring's consumer: COPYING counts
// the threads inside an ioctl into this shard's processes, and `epoch` is the number of mm events
// (FORK/REMAP/REMOVE/UNMAP) the owner had handled when it computed the destination addresses. Any
// event published since makes those addresses stale.
static int EnterGate(uint8_t *ring, uint32_t epoch, bool owner) {
  uint32_t *want = (uint32_t *)(ring + RING_WANT_READ_OFFSET);
  if (__atomic_load_n(want, __ATOMIC_SEQ_CST)) {
    // A drain is waiting for the copies in flight to end. The owner gives way at once (its loop
    // drains the shard itself); a helper waits a little, letting the drainer have the CPU.
    if (owner) return FILL_YIELDED;
    double until = MonotonicNs() + kMaxWantWaitNs;
    while (__atomic_load_n(want, __ATOMIC_SEQ_CST)) {
      if (MonotonicNs() > until) return FILL_EVENT;
      sched_yield();
    }
  }
  uint32_t *copying = (uint32_t *)(ring + RING_COPYING_OFFSET);
  uint32_t *reading = (uint32_t *)(ring + RING_READING_OFFSET);
  uint32_t *events = (uint32_t *)(ring + RING_EVENTS_OFFSET);
  for (int spins = 0;; spins++) {
    __atomic_add_fetch(copying, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(reading, __ATOMIC_SEQ_CST) == 0) break;
    __atomic_sub_fetch(copying, 1, __ATOMIC_SEQ_CST);
    if (spins >= kMaxReadingSpins) return FILL_EVENT;
  }
  if (__atomic_load_n(events, __ATOMIC_SEQ_CST) != epoch) {
    __atomic_sub_fetch(copying, 1, __ATOMIC_SEQ_CST);
    return FILL_EVENT;
  }
  return FILL_DONE;
}

static void LeaveGate(uint8_t *ring) {
  __atomic_sub_fetch((uint32_t *)(ring + RING_COPYING_OFFSET), 1, __ATOMIC_SEQ_CST);
}

static bool RecordsWaiting(uint8_t *ring) {
  return __atomic_load_n((uint32_t *)(ring + RING_HEAD_OFFSET), __ATOMIC_ACQUIRE) !=
         __atomic_load_n((uint32_t *)(ring + RING_TAIL_OFFSET), __ATOMIC_ACQUIRE);
}

// A uffd of the worker's own shard has a message nobody has read yet: a fault the main thread has
// not drained into the ring (it may not even be running: on 2 vCPUs the fill, the restored threads
// and the main thread contend). One epoll_wait with no timeout, about a microsecond.
static bool UnreadFault(int epfd) {
  struct epoll_event ev;
  return epfd >= 0 && epoll_wait(epfd, &ev, 1, 0) > 0;
}

// fillRuns(uffd, gate: Uint8Array, epoch, src: Buffer, runs: Float64Array [dst, srcOffset, len]...,
//          nRuns, slicePages, watch: Uint8Array | null, yieldAtNs, out: Float64Array, epfd = -1) -> status
// Copies the runs in order. Between slices, once CLOCK_MONOTONIC passes yieldAtNs, it stops if a
// record waits in `watch` (the calling worker's own ring) or a uffd in `epfd` (its shard's epoll
// set) is readable: FILL_YIELDED. EEXIST skips the page
// (it is there already) and goes on. out[0] = bytes of the run list dealt with (copied or already
// present, in list order), out[1] = pages found present, out[2] = errno of FILL_ERRNO, out[3] = ioctls.
static Napi::Value FillRuns(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 10 || !info[1].IsTypedArray() || !info[3].IsBuffer() || !info[4].IsTypedArray() || !info[9].IsTypedArray()) {
    Napi::TypeError::New(env, "fillRuns: expected (uffd, gate, epoch, src, runs, nRuns, slicePages, watch, yieldAtNs, out)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int uffd = ArgInt(info, 0);
  Napi::Uint8Array gateArr = info[1].As<Napi::Uint8Array>();
  uint32_t epoch = (uint32_t)info[2].As<Napi::Number>().Int64Value();
  Napi::Buffer<uint8_t> src = info[3].As<Napi::Buffer<uint8_t>>();
  Napi::Float64Array runs = info[4].As<Napi::Float64Array>();
  size_t nRuns = (size_t)ArgInt(info, 5);
  uint64_t slice = (uint64_t)ArgInt(info, 6) * 4096;
  uint8_t *watch = info[7].IsTypedArray() ? info[7].As<Napi::Uint8Array>().Data() : nullptr;
  double yieldAt = info[8].As<Napi::Number>().DoubleValue();
  Napi::Float64Array out = info[9].As<Napi::Float64Array>();
  int epfd = info.Length() > 10 && info[10].IsNumber() ? ArgInt(info, 10) : -1;
  if (nRuns * 3 > runs.ElementLength() || out.ElementLength() < 4 || slice == 0 || gateArr.ByteLength() < RING_HEADER_BYTES) {
    Napi::RangeError::New(env, "fillRuns: run list, slice or result array out of range").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  for (size_t i = 0; i < nRuns; i++) {
    if (runs[3 * i + 1] < 0 || runs[3 * i + 2] < 0 || (uint64_t)runs[3 * i + 1] + (uint64_t)runs[3 * i + 2] > src.Length()) {
      Napi::RangeError::New(env, "fillRuns: a run's source lies outside the buffer").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  uint8_t *gate = gateArr.Data();
  double dealt = 0, existing = 0, ioctls = 0;
  int status = FILL_DONE, err = 0;
  for (size_t i = 0; i < nRuns && status == FILL_DONE; i++) {
    uint64_t dst = (uint64_t)runs[3 * i], off = (uint64_t)runs[3 * i + 1], len = (uint64_t)runs[3 * i + 2];
    uint64_t at = 0;
    while (at < len) {
      if (watch && MonotonicNs() >= yieldAt && (RecordsWaiting(watch) || UnreadFault(epfd))) {
        status = FILL_YIELDED;
        break;
      }
      if ((status = EnterGate(gate, epoch, gate == watch)) != FILL_DONE) break;
      struct uffdio_copy c = {};
      c.dst = dst + at;
      c.src = (uint64_t)(uintptr_t)(src.Data() + off + at);
      c.len = len - at < slice ? len - at : slice;
      int rc = ioctl(uffd, UFFDIO_COPY, &c);
      int e = errno;
      LeaveGate(gate);
      ioctls++;
      uint64_t copied = c.copy > 0 ? (uint64_t)c.copy : 0;
      at += copied;
      dealt += copied;
      if (rc == 0) continue;
      // A copy that stops at a page already present reports EAGAIN with its progress; the next
      // ioctl starts at that page and gets EEXIST. EAGAIN with no progress is an mm change.
      if (e == EAGAIN && copied > 0) continue;
      if (e == EEXIST) {
        // Copied meanwhile (a fault served by another thread, or a racing fill): step over it.
        at += 4096;
        dealt += 4096;
        existing++;
        continue;
      }
      status = FILL_ERRNO;
      err = e;
      break;
    }
  }
  out[0] = dealt;
  out[1] = existing;
  out[2] = err;
  out[3] = ioctls;
  return Napi::Number::New(env, status);
}

// threadPreemptions() -> involuntary context switches of the calling thread (getrusage
// RUSAGE_THREAD): how often something else took its CPU, for the fill to notice it has no CPU to spare.
static Napi::Value ThreadPreemptions(const Napi::CallbackInfo &info) {
  struct rusage ru;
  if (getrusage(RUSAGE_THREAD, &ru) < 0) return ThrowErrno(info.Env(), "getrusage", errno);
  return Napi::Number::New(info.Env(), (double)ru.ru_nivcsw);
}

void InitFill(Napi::Env env, Napi::Object exports) {
  exports.Set("fillRuns", Napi::Function::New(env, FillRuns));
  exports.Set("threadPreemptions", Napi::Function::New(env, ThreadPreemptions));
  Napi::Object s = Napi::Object::New(env);
  s.Set("DONE", (int)FILL_DONE);
  s.Set("YIELDED", (int)FILL_YIELDED);
  s.Set("EVENT", (int)FILL_EVENT);
  s.Set("ERRNO", (int)FILL_ERRNO);
  exports.Set("fillStatus", s);
}
