// Read-only mmap of page image files: the UFFDIO_COPY source is the page cache itself, with no copy
// through an intermediate buffer (as fast as anonymous memory when cached, see DESIGN.md).
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <string>
#include <napi.h>
#include "errors.h"

// mmapFile(path) -> Buffer over the whole file (read-only; unmapped when the Buffer is collected).
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
  void *p = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
  int err = errno;
  close(fd);
  if (p == MAP_FAILED) return ThrowErrno(env, "mmap", err);
  return Napi::Buffer<uint8_t>::New(env, (uint8_t *)p, len, [](Napi::Env, uint8_t *data, size_t *hint) {
    munmap(data, *hint);
    delete hint;
  }, new size_t(len));
}

void InitMmap(Napi::Env env, Napi::Object exports) {
  exports.Set("mmapFile", Napi::Function::New(env, MmapFile));
}
