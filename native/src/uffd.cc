// userfaultfd: create, API handshake, register/unregister and the filling ioctls. No policy here:
// which pages to copy, and what an errno means for the restore, is decided in TypeScript.
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <napi.h>
#include "args.h"
#include "errors.h"

// Debian bookworm's headers (6.1) predate UFFDIO_POISON; the kernel here (6.18) has it.
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef _UFFDIO_POISON
#define _UFFDIO_POISON (0x08)
struct uffdio_poison {
  struct uffdio_range range;
  __u64 mode;
  __s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

static Napi::Value Create(const Napi::CallbackInfo &info) {
  int flags = info.Length() > 0 ? ArgInt(info, 0) : (O_CLOEXEC | O_NONBLOCK);
  int fd = (int)syscall(SYS_userfaultfd, flags);
  if (fd < 0) return ThrowErrno(info.Env(), "userfaultfd", errno);
  return Napi::Number::New(info.Env(), fd);
}

// api(fd, features: bigint) -> { features: bigint, ioctls: bigint }
static Napi::Value Api(const Napi::CallbackInfo &info) {
  if (!CheckArgs(info, 2, "uffdApi")) return info.Env().Undefined();
  bool lossless;
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
  if (ioctl(ArgInt(info, 0), UFFDIO_API, &api) < 0) return ThrowErrno(info.Env(), "UFFDIO_API", errno);
  Napi::Object r = Napi::Object::New(info.Env());
  r.Set("features", Napi::BigInt::New(info.Env(), (uint64_t)api.features));
  r.Set("ioctls", Napi::BigInt::New(info.Env(), (uint64_t)api.ioctls));
  return r;
}

// register(fd, start, len, mode) -> ioctls: bigint
static Napi::Value Register(const Napi::CallbackInfo &info) {
  if (!CheckArgs(info, 4, "uffdRegister")) return info.Env().Undefined();
  struct uffdio_register reg = {};
  reg.range.start = ArgU64(info, 1);
  reg.range.len = ArgU64(info, 2);
  reg.mode = ArgU64(info, 3);
  if (ioctl(ArgInt(info, 0), UFFDIO_REGISTER, &reg) < 0) return ThrowErrno(info.Env(), "UFFDIO_REGISTER", errno);
  return Napi::BigInt::New(info.Env(), (uint64_t)reg.ioctls);
}

static Napi::Value Unregister(const Napi::CallbackInfo &info) {
  if (!CheckArgs(info, 3, "uffdUnregister")) return info.Env().Undefined();
  struct uffdio_range range = {ArgU64(info, 1), ArgU64(info, 2)};
  if (ioctl(ArgInt(info, 0), UFFDIO_UNREGISTER, &range) < 0) return ThrowErrno(info.Env(), "UFFDIO_UNREGISTER", errno);
  return info.Env().Undefined();
}

static Napi::Value Wake(const Napi::CallbackInfo &info) {
  if (!CheckArgs(info, 3, "uffdWake")) return info.Env().Undefined();
  struct uffdio_range range = {ArgU64(info, 1), ArgU64(info, 2)};
  if (ioctl(ArgInt(info, 0), UFFDIO_WAKE, &range) < 0) return ThrowErrno(info.Env(), "UFFDIO_WAKE", errno);
  return info.Env().Undefined();
}

// A partial copy (or zeropage) reports how far it got in the result field while failing with an
// errno; the error carries that as `done` so the caller can keep the rest for a retry.
static Napi::Value PartialError(Napi::Env env, const char *op, int err, int64_t done) {
  Napi::Error e = ErrnoError(env, op, err);
  e.Set("done", Napi::Number::New(env, done > 0 ? (double)done : 0));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

// copy(fd, dst, src: Buffer, srcOffset, len, mode) -> bytes copied (== len unless it throws)
static Napi::Value Copy(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 6, "uffdCopy")) return env.Undefined();
  Napi::Buffer<uint8_t> src = info[2].As<Napi::Buffer<uint8_t>>();
  uint64_t off = ArgU64(info, 3), len = ArgU64(info, 4);
  if (off + len > src.Length()) {
    Napi::RangeError::New(env, "uffdCopy: source range lies outside the buffer").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  struct uffdio_copy c = {};
  c.dst = ArgU64(info, 1);
  c.src = (uint64_t)(uintptr_t)(src.Data() + off);
  c.len = len;
  c.mode = ArgU64(info, 5);
  if (ioctl(ArgInt(info, 0), UFFDIO_COPY, &c) < 0) return PartialError(env, "UFFDIO_COPY", errno, c.copy);
  return Napi::Number::New(env, (double)c.copy);
}

// zeropage(fd, start, len, mode) -> bytes zeroed
static Napi::Value Zeropage(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 4, "uffdZeropage")) return env.Undefined();
  struct uffdio_zeropage z = {};
  z.range.start = ArgU64(info, 1);
  z.range.len = ArgU64(info, 2);
  z.mode = ArgU64(info, 3);
  if (ioctl(ArgInt(info, 0), UFFDIO_ZEROPAGE, &z) < 0) return PartialError(env, "UFFDIO_ZEROPAGE", errno, z.zeropage);
  return Napi::Number::New(env, (double)z.zeropage);
}

// poison(fd, start, len): later accesses to still-missing pages raise SIGBUS instead of reading
// zeros, and the marks outlive the uffd — the fail-stop that needs no pid.
static Napi::Value Poison(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, 3, "uffdPoison")) return env.Undefined();
  struct uffdio_poison p = {};
  p.range.start = ArgU64(info, 1);
  p.range.len = ArgU64(info, 2);
  if (ioctl(ArgInt(info, 0), UFFDIO_POISON, &p) < 0) return PartialError(env, "UFFDIO_POISON", errno, p.updated);
  return Napi::Number::New(env, (double)p.updated);
}

void InitUffd(Napi::Env env, Napi::Object exports) {
  exports.Set("uffdCreate", Napi::Function::New(env, Create));
  exports.Set("uffdApi", Napi::Function::New(env, Api));
  exports.Set("uffdRegister", Napi::Function::New(env, Register));
  exports.Set("uffdUnregister", Napi::Function::New(env, Unregister));
  exports.Set("uffdWake", Napi::Function::New(env, Wake));
  exports.Set("uffdCopy", Napi::Function::New(env, Copy));
  exports.Set("uffdZeropage", Napi::Function::New(env, Zeropage));
  exports.Set("uffdPoison", Napi::Function::New(env, Poison));
  Napi::Object c = Napi::Object::New(env);
  c.Set("UFFD_USER_MODE_ONLY", UFFD_USER_MODE_ONLY);
  c.Set("O_CLOEXEC", O_CLOEXEC);
  c.Set("O_NONBLOCK", O_NONBLOCK);
  c.Set("UFFDIO_COPY_MODE_DONTWAKE", (double)UFFDIO_COPY_MODE_DONTWAKE);
  c.Set("UFFDIO_REGISTER_MODE_MISSING", (double)UFFDIO_REGISTER_MODE_MISSING);
  exports.Set("uffdConstants", c);
}
