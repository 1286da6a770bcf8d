// Read-only mmap of page image files: the UFFDIO_COPY source is the page cache itself, with no copy
// through an intermediate buffer (as fast as anonymous memory when cached, see DESIGN.md).
//
// One mapping per file per process, shared by every worker thread: each worker opens every
// process's pages files (any of them may fill any process on lease), and separate mappings would
// each pay their own page-table faults on the first copy from every page. A new mapping's page
// tables are filled in the background (MADV_POPULATE_READ): the fill's copies then find the source
// mapped instead of taking faults on it inside UFFDIO_COPY (a fresh source mapping halves the copy
// rate: `faultline-copy-floor --fresh-source`, docs/DESIGN.md).
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <napi.h>
#include "args.h"
#include "errors.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

namespace {

// A file as it is now: a dump rewritten in place (new inode, size or mtime) gets a new mapping.
using FileKey = std::tuple<dev_t, ino_t, off_t, long, long>;

struct Mapping {
  uint8_t *addr;
  size_t len;
  int refs;  // Buffers over it, plus the populating thread while it runs
};

std::mutex mu;
std::map<FileKey, Mapping> mappings;

void Release(const FileKey &key) {
  std::lock_guard<std::mutex> lock(mu);
  auto it = mappings.find(key);
  if (it == mappings.end() || --it->second.refs > 0) return;
  munmap(it->second.addr, it->second.len);
  mappings.erase(it);
}

// 4 MiB at a time, so the thread gives the CPU back between steps.
void Populate(FileKey key, uint8_t *addr, size_t len) {
  const size_t step = 4u << 20;
  for (size_t at = 0; at < len; at += step) {
    if (madvise(addr + at, len - at < step ? len - at : step, MADV_POPULATE_READ) < 0) break;
  }
  Release(key);
}

}  // namespace

// mmapFile(path) -> Buffer over the whole file (read-only; the mapping is shared with the other
// threads that map the same file, and unmapped when the last Buffer over it is collected).
static Napi::Value MmapFile(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ThrowErrno(env, "open", errno);
  struct stat st;
  if (fstat(fd, &st) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "fstat", err);
  }
  size_t len = (size_t)st.st_size;
  if (len == 0) {
    close(fd);
    return Napi::Buffer<uint8_t>::New(env, 0);
  }
  FileKey key{st.st_dev, st.st_ino, st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec};
  uint8_t *addr;
  bool fresh = false;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = mappings.find(key);
    if (it != mappings.end()) {
      it->second.refs++;
      addr = it->second.addr;
    } else {
      void *p = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
      int err = errno;
      if (p == MAP_FAILED) {
        close(fd);
        return ThrowErrno(env, "mmap", err);
      }
      addr = (uint8_t *)p;
      mappings[key] = Mapping{addr, len, 2};
      fresh = true;
    }
  }
  close(fd);
  if (fresh) std::thread(Populate, key, addr, len).detach();
  return Napi::Buffer<uint8_t>::New(env, addr, len, [](Napi::Env, uint8_t *, FileKey *k) {
    Release(*k);
    delete k;
  }, new FileKey(key));
}

// mapAnonymous(len) -> address of a private anonymous read-write mapping, by number: a region of
// the worker's own for userfaultfd (the fault path's warm-up, src/worker/warm-up.ts), which no
// JavaScript object may reach (a thread that read it while registered would wait on the uffd).
static Napi::Value MapAnonymous(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 1, "mapAnonymous")) return env.Undefined();
  void *p = mmap(nullptr, (size_t)ArgU64(info, 0), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return ThrowErrno(env, "mmap", errno);
  return Napi::Number::New(env, (double)(uintptr_t)p);
}

// unmap(address, len): the other end of mapAnonymous.
static Napi::Value Unmap(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 2, "unmap")) return env.Undefined();
  if (munmap((void *)(uintptr_t)ArgU64(info, 0), (size_t)ArgU64(info, 1)) < 0) return ThrowErrno(env, "munmap", errno);
  return env.Undefined();
}

void InitMmap(Napi::Env env, Napi::Object exports) {
  exports.Set("mmapFile", Napi::Function::New(env, MmapFile));
  exports.Set("mapAnonymous", Napi::Function::New(env, MapAnonymous));
  exports.Set("unmap", Napi::Function::New(env, Unmap));
}
