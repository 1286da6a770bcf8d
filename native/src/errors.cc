#include "errors.h"
#include <errno.h>
#include <string.h>
#include <time.h>
#include <string>

const char *ErrnoName(int err) {
  switch (err) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(ESRCH) E(EINTR) E(EIO) E(ENXIO) E(EBADF) E(EAGAIN) E(ENOMEM) E(EACCES)
    E(EFAULT) E(EBUSY) E(EEXIST) E(ENODEV) E(ENOTDIR) E(EISDIR) E(EINVAL) E(ENFILE) E(EMFILE)
    E(ENOTTY) E(ENOSPC) E(EPIPE) E(ERANGE) E(ENOSYS) E(ENOTSOCK) E(EADDRINUSE) E(ECONNREFUSED)
    E(ECONNRESET) E(ENOTCONN) E(EOPNOTSUPP) E(ETIMEDOUT) E(EHWPOISON) E(ENAMETOOLONG) E(ELOOP)
#undef E
    default: return "EUNKNOWN";
  }
}

Napi::Error ErrnoError(Napi::Env env, const char *syscall, int err) {
  std::string msg = std::string(syscall) + ": " + strerror(err) + " (" + ErrnoName(err) + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, ErrnoName(err)));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

Napi::Value ThrowErrno(Napi::Env env, const char *syscall, int err) {
  ErrnoError(env, syscall, err).ThrowAsJavaScriptException();
  return env.Undefined();
}

double MonotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}
